# Runs after boot.py: start the node firmware on the ESP32 board.
from ghnode import app

app.main()
