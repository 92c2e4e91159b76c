"""The Packet API emulator: :mod:`.emulator` (HTTP, with an admin API under ``/_emulator/``;
``python3 -m packet_lab.packet``) and :mod:`.admin`, the admin API's client.

Import-light on purpose: importing this package loads nothing.
"""
