"""ESP32 Wi-Fi station for ghnode.link: isconnected(), connect(), rssi()."""
import network


class WiFi:
    def __init__(self, ssid, password, hostname=None):
        self.ssid = ssid
        self.password = password
        self.wlan = network.WLAN(network.STA_IF)
        if hostname:
            try:
                network.hostname(hostname)
            except (AttributeError, ValueError, OSError):  # older firmware
                pass

    def isconnected(self):
        return self.wlan.isconnected()

    def connect(self):
        """Start associating and return at once; the link polls isconnected()."""
        w = self.wlan
        if not w.active():
            w.active(True)
            try:
                w.config(pm=w.PM_NONE)  # power save adds 100s of ms latency to MQTT replies
            except (AttributeError, ValueError, OSError):
                pass
        if w.isconnected() or w.status() == network.STAT_CONNECTING:
            return  # calling connect() mid-association raises "Wifi Internal Error"
        w.connect(self.ssid, self.password)

    def disconnect(self):
        self.wlan.disconnect()

    def rssi(self):
        try:
            return self.wlan.status("rssi")
        except (OSError, ValueError):  # not associated
            return None

    def ip(self):
        return self.wlan.ifconfig()[0]
