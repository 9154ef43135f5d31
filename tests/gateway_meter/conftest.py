"""The meter suites also drive the whole gateway: its helpers (gwkit) live beside the gateway tests."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "gateway"))
