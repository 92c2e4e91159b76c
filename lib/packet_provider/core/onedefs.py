"""oned's numbers and names, each defined once: VM STATE and LCM_STATE (OpenNebula 5.12,
include/VirtualMachine.h), the driver names this plugin registers (the ``packet`` IPAM_MAD,
the ``alias_sdnat`` VN_MAD) and the Packet IP types a packet address range may ask for.

Standard library only and nothing imported: the hook's fast path reads it before deciding
whether anything heavier is needed. The objects themselves are :mod:`packet_provider.core.oned`.
"""

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: typing is not imported at run time
    from typing import Optional

# -- drivers -----------------------------------------------------------------------------------

ALIAS_VN_MAD = "alias_sdnat"  # VN_MAD of the networks whose aliases get DNAT/SNAT on the host
PACKET_IPAM_MAD = "packet"  # IPAM_MAD of an address range that is a Packet reservation
PACKET_IP_TYPES = ("public_ipv4", "global_ipv4")  # PACKET_IP_TYPE of such a range, default first

# -- VM STATE ----------------------------------------------------------------------------------

STATE_NAMES = dict(enumerate((
    "INIT", "PENDING", "HOLD", "ACTIVE", "STOPPED", "SUSPENDED", "DONE", "FAILED", "POWEROFF",
    "UNDEPLOYED", "CLONING", "CLONING_FAILURE")))
STATE_ACTIVE = 3
STATE_SUSPENDED = 5
STATE_DONE = 6
STATE_POWEROFF = 8

# -- LCM_STATE (meaningful while STATE is ACTIVE) ----------------------------------------------

LCM_NAMES = (
    "LCM_INIT", "PROLOG", "BOOT", "RUNNING", "MIGRATE", "SAVE_STOP", "SAVE_SUSPEND",
    "SAVE_MIGRATE", "PROLOG_MIGRATE", "PROLOG_RESUME", "EPILOG_STOP", "EPILOG", "SHUTDOWN",
    "CANCEL", "FAILURE", "CLEANUP_RESUBMIT", "UNKNOWN", "HOTPLUG", "SHUTDOWN_POWEROFF",
    "BOOT_UNKNOWN", "BOOT_POWEROFF", "BOOT_SUSPENDED", "BOOT_STOPPED", "CLEANUP_DELETE",
    "HOTPLUG_SNAPSHOT", "HOTPLUG_NIC", "HOTPLUG_SAVEAS", "HOTPLUG_SAVEAS_POWEROFF",
    "HOTPLUG_SAVEAS_SUSPENDED", "SHUTDOWN_UNDEPLOY", "EPILOG_UNDEPLOY", "PROLOG_UNDEPLOY",
    "BOOT_UNDEPLOY", "HOTPLUG_PROLOG_POWEROFF", "HOTPLUG_EPILOG_POWEROFF", "BOOT_MIGRATE",
    "BOOT_FAILURE", "BOOT_MIGRATE_FAILURE", "PROLOG_MIGRATE_FAILURE", "PROLOG_FAILURE",
    "EPILOG_FAILURE", "EPILOG_STOP_FAILURE", "EPILOG_UNDEPLOY_FAILURE",
    "PROLOG_MIGRATE_POWEROFF", "PROLOG_MIGRATE_POWEROFF_FAILURE", "PROLOG_MIGRATE_SUSPEND",
    "PROLOG_MIGRATE_SUSPEND_FAILURE", "BOOT_UNDEPLOY_FAILURE", "BOOT_STOPPED_FAILURE",
    "PROLOG_RESUME_FAILURE", "PROLOG_UNDEPLOY_FAILURE", "DISK_SNAPSHOT_POWEROFF",
    "DISK_SNAPSHOT_REVERT_POWEROFF", "DISK_SNAPSHOT_DELETE_POWEROFF", "DISK_SNAPSHOT_SUSPENDED",
    "DISK_SNAPSHOT_REVERT_SUSPENDED", "DISK_SNAPSHOT_DELETE_SUSPENDED", "DISK_SNAPSHOT",
    "DISK_SNAPSHOT_REVERT", "DISK_SNAPSHOT_DELETE", "PROLOG_MIGRATE_UNKNOWN",
    "PROLOG_MIGRATE_UNKNOWN_FAILURE", "DISK_RESIZE", "DISK_RESIZE_POWEROFF",
    "DISK_RESIZE_UNDEPLOYED", "HOTPLUG_NIC_POWEROFF",
)
LCM_RUNNING = LCM_NAMES.index("RUNNING")  # 3
LCM_HOTPLUG_NIC = LCM_NAMES.index("HOTPLUG_NIC")  # 25
# 65, as pyone's LCM_STATE has it (the integration reference's table says 61: wrong)
LCM_HOTPLUG_NIC_POWEROFF = LCM_NAMES.index("HOTPLUG_NIC_POWEROFF")
# a migration is under way: the last history record is already the destination, while the VM
# still runs on the source (MIGRATE, SAVE_MIGRATE) or on no host yet
LCM_MIGRATING = frozenset(n for n, name in enumerate(LCM_NAMES) if "MIGRATE" in name)
# ACTIVE states in which the VM runs on the host of its last history record: RUNNING and the
# live operations on a running VM (disk and NIC hot-plug, snapshots, save-as, disk resize)
LCM_ON_HOST = frozenset(LCM_NAMES.index(name) for name in (
    "RUNNING", "HOTPLUG", "HOTPLUG_SNAPSHOT", "HOTPLUG_NIC", "HOTPLUG_SAVEAS", "DISK_SNAPSHOT",
    "DISK_SNAPSHOT_REVERT", "DISK_SNAPSHOT_DELETE", "DISK_RESIZE"))


# while its VM is in one of these STATEs an alias address stays routed to the device of the
# VM's host (the hook assigns it there, check and reconcile expect it there)
ADDRESS_KEEPING_STATES = frozenset({STATE_ACTIVE, STATE_SUSPENDED, STATE_POWEROFF})


def runs_on_host(state: int, lcm_state: int) -> bool:
    """Whether a VM in ``state``/``lcm_state`` runs on the host of its last history record
    (:data:`LCM_ON_HOST`): not during a migration, before it boots or while it is off."""
    return state == STATE_ACTIVE and lcm_state in LCM_ON_HOST


def state_name(state: "Optional[int]", lcm_state: int = 0) -> str:
    """``ACTIVE/RUNNING``, ``POWEROFF``, ...: a VM state as the CLI names it (``-`` for
    None, the number for one oned does not define)."""
    if state is None:
        return "-"
    name = STATE_NAMES.get(state, str(state))
    if state != STATE_ACTIVE:
        return name
    lcm = LCM_NAMES[lcm_state] if 0 <= lcm_state < len(LCM_NAMES) else str(lcm_state)
    return f"{name}/{lcm}"

