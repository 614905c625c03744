"""Clients that speak the wire protocol only, as a third party would."""
