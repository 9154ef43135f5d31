"""The gateway's trading agent: forecasts become orders, flexible loads move to cheap intervals."""
from .agent import DayPlan, TradingAgent
from .flex import (DEFAULT_APPLIANCES, Appliance, Override, ScheduleError, WindowPlan,
                   schedule, window_for_day)
from .strategy import Position, confidence, limit_price, make_orders, position

__all__ = [
    "DEFAULT_APPLIANCES", "Appliance", "DayPlan", "Override", "Position", "ScheduleError",
    "TradingAgent", "WindowPlan", "confidence", "limit_price", "make_orders", "position",
    "schedule", "window_for_day",
]
