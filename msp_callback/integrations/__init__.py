"""Thin adapters over `msp_callback.integrations.engine.MSPEngine` (imported lazily: each pulls its framework)."""
