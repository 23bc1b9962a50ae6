"""Thin adapters over `msp_callback.engine.MSPEngine` (imported lazily: each pulls its framework)."""
