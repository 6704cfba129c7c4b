"""OCPP: gridflex's plans as smart-charging profiles for stations (1.6, 2.0.1, 2.1)."""
