"""Engines that generate SC-TIR steps: see base.Engine."""
