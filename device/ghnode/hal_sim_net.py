"""Host (virtual node) Wi-Fi for ghnode.link: connected unless a test takes the access point away."""


class WiFi:
    def __init__(self, rssi=-55):
        self.in_range = True  # False: the access point is gone, connect() cannot succeed
        self.up = True
        self.connects = 0
        self._rssi = rssi

    def isconnected(self):
        return self.up

    def connect(self):
        self.connects += 1
        self.up = self.in_range

    def out_of_range(self):
        self.in_range = self.up = False

    def rssi(self):
        return self._rssi if self.up else None
