"""Host (virtual node) Wi-Fi for ghnode.link: always connected unless a test sets up=False."""


class WiFi:
    def __init__(self, rssi=-55):
        self.up = True
        self.connects = 0
        self._rssi = rssi

    def isconnected(self):
        return self.up

    def connect(self):
        self.connects += 1
        self.up = True

    def rssi(self):
        return self._rssi if self.up else None
