"""The ``packet-provider`` operator command: ``check`` finds where oned, Packet and the IPAM
driver's lease directory disagree; ``reconcile`` makes them agree, in the safe direction.

- :mod:`packet_provider.ops.model`: the snapshot and the pure comparison (kinds of drift);
- :mod:`packet_provider.ops.gather`: reading oned, Packet and the state directory;
- :mod:`packet_provider.ops.reconcile`: the fixes, under the hook's and the driver's locks;
- :mod:`packet_provider.ops.command`: argument parsing, output, exit codes.
"""
