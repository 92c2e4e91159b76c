"""Emulators that stand in for services the plugin talks to (Packet's API is gone).

- :mod:`packet_provider.emulator.packet`: the Packet API over HTTP (``python3 -m
  packet_provider.emulator``), with an admin API under ``/_emulator/``
  (:mod:`packet_provider.emulator.admin` is its client).
- :mod:`packet_provider.emulator.oned`: oned's XML-RPC API.

This package stays import-light on purpose: importing it loads nothing.
"""
