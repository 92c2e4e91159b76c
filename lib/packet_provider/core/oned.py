"""oned's objects as plain values: the one model every component reads oned's XML through.

Works on any ElementTree-like element (standard library or lxml), so the hypervisor side
and the frontend share one model. Values are validated here, at the edge: an IP that is not
an IPv4 address or an id that is not a number is an InputError, never a surprise later.
The numbers and names these objects carry (STATE, LCM_STATE, VN_MAD, IPAM_MAD) are defined
in :mod:`packet_provider.core.onedefs`.

Readers:

- :func:`parse_vm`, for the whole VM (``one.vm.info``, a state hook's ``$TEMPLATE``): STATE
  and each history record's SEQ and HID are required, the hook decides with them.
- :func:`parse_vnm_view`, for what a VNM action reads on its stdin: the cut-down ``<VM>``
  ``one_vmm_exec`` builds, with no STATE, LCM_STATE or NAME, the history as separate
  ``HISTORY_RECORDS`` wrappers holding only HOSTNAME, DS_ID and VM_MAD, and every NIC,
  NIC_ALIAS and SECURITY_GROUP_RULE in a ``TEMPLATE`` wrapper of its own. It also takes the
  whole VM. Its model has ``state`` None and no history (the VNM reads neither).
- :func:`parse_vnet`, the address ranges of a ``<VNET>`` (``one.vn.info``), custom AR
  attributes included (IPAM_MAD, DEPLOY_ID, PACKET_PROJECT, PACKET_TOKEN).
- :func:`parse_host`, a ``<HOST>`` and its Packet device (``TEMPLATE/PROVISION/DEPLOY_ID``).
- :func:`parse_ipam_action_data`, what an IPAM driver action reads on its stdin.

VM readers find NICs and aliases across every ``TEMPLATE`` wrapper (``TEMPLATE/NIC``); a
whole VM has exactly one.
"""

from __future__ import annotations

import ipaddress
import re
from types import MappingProxyType
from typing import Any, Dict, Mapping, NamedTuple, Optional, Tuple

from packet_provider.core import log, validate
from packet_provider.core.errors import InputError

Address = ipaddress.IPv4Address
NO_LEASES: Mapping[Address, int] = MappingProxyType({})

# The objects are immutable records (NamedTuple: a class costs a tenth of a frozen
# dataclass to create, and every action of every component imports this module).


class Nic(NamedTuple):
    nic_id: int
    name: str
    ip: Optional[ipaddress.IPv4Address]
    network_id: Optional[int]
    vn_mad: str
    attach: bool = False  # ATTACH=YES: being hot attached or detached
    bridge: str = ""  # BRIDGE as oned wrote it (checked where it is used)


class NicAlias(NamedTuple):
    nic_id: int
    name: str
    parent: str
    parent_id: Optional[int]
    ip: Optional[ipaddress.IPv4Address]
    network_id: Optional[int]
    ar_id: Optional[int]
    vn_mad: str
    external: bool  # EXTERNAL=YES
    attach: bool
    # an EXTERNAL element, whatever its value: what oned tests to run VNM steps on a hot
    # attach or detach of the alias (integration reference 4.3)
    has_external: bool = False


class History(NamedTuple):
    seq: int
    hid: int
    hostname: str
    action: int


class VM(NamedTuple):
    id: int
    name: str
    state: Optional[int]  # None only from parse_vnm_view (the VNM view has no STATE)
    lcm_state: int
    deploy_id: str
    nics: Tuple[Nic, ...]
    aliases: Tuple[NicAlias, ...]
    history: Tuple[History, ...]

    @property
    def current_history(self) -> Optional[History]:
        """The last history record: the host the VM is on (or was on, when DONE)."""
        return self.history[-1] if self.history else None

    def parent_of(self, alias: NicAlias) -> Optional[Nic]:
        """The NIC an alias belongs to, by PARENT_ID when present, else by PARENT name."""
        for nic in self.nics:
            if alias.parent_id is not None and nic.nic_id == alias.parent_id:
                return nic
        if alias.parent_id is None:
            for nic in self.nics:
                if nic.name == alias.parent:
                    return nic
        return None


def child_text(element: Any, path: str) -> str:
    """The stripped text of ``element``'s child at ``path`` ("" when absent or empty)."""
    found = element.find(path)
    if found is None or found.text is None:
        return ""
    return found.text.strip()


_INTEGER = re.compile(r"-?[0-9]{1,18}")


def _int(element: Any, path: str, what: str, required: bool = True) -> Optional[int]:
    text = child_text(element, path)
    if not text:
        if required:
            raise InputError(f"{what} is missing")
        return None
    if not _INTEGER.fullmatch(text):
        raise InputError(f"{what} must be an integer, got {text[:40]!r}")
    return int(text)


def _ip(element: Any, what: str) -> Optional[ipaddress.IPv4Address]:
    text = child_text(element, "IP")
    return validate.ipv4(text, what) if text else None


def _yes(element: Any, path: str) -> bool:
    return child_text(element, path).upper() == "YES"


def _nic_id(element: Any, what: str) -> int:
    text = child_text(element, "NIC_ID")
    if not text:
        raise InputError(f"{what} is missing")
    return validate.object_id(text, what)


def parse_nic(element: Any) -> Nic:
    """A ``<NIC>`` element."""
    nic_id = _nic_id(element, "NIC/NIC_ID")
    return Nic(
        nic_id=nic_id,
        name=child_text(element, "NAME") or f"NIC{nic_id}",
        ip=_ip(element, f"NIC {nic_id} IP"),
        network_id=_int(element, "NETWORK_ID", f"NIC {nic_id} NETWORK_ID", required=False),
        vn_mad=child_text(element, "VN_MAD"),
        attach=_yes(element, "ATTACH"),
        bridge=child_text(element, "BRIDGE"),
    )


def parse_alias(element: Any) -> NicAlias:
    """A ``<NIC_ALIAS>`` element."""
    nic_id = _nic_id(element, "NIC_ALIAS/NIC_ID")
    return NicAlias(
        nic_id=nic_id,
        name=child_text(element, "NAME"),
        parent=child_text(element, "PARENT"),
        parent_id=_int(element, "PARENT_ID", f"NIC_ALIAS {nic_id} PARENT_ID", required=False),
        ip=_ip(element, f"NIC_ALIAS {nic_id} IP"),
        network_id=_int(element, "NETWORK_ID", f"NIC_ALIAS {nic_id} NETWORK_ID", required=False),
        ar_id=_int(element, "AR_ID", f"NIC_ALIAS {nic_id} AR_ID", required=False),
        vn_mad=child_text(element, "VN_MAD"),
        external=_yes(element, "EXTERNAL"),
        attach=_yes(element, "ATTACH"),
        has_external=element.find("EXTERNAL") is not None,
    )


def parse_history(element: Any) -> History:
    """A ``<HISTORY>`` record (SEQ and HID required)."""
    return History(
        seq=_int(element, "SEQ", "HISTORY/SEQ"),
        hid=_int(element, "HID", "HISTORY/HID"),
        hostname=child_text(element, "HOSTNAME"),
        action=_int(element, "ACTION", "HISTORY/ACTION", required=False) or 0,
    )


def _nics_and_aliases(root: Any) -> Tuple[Tuple[Nic, ...], Tuple[NicAlias, ...]]:
    """Every NIC and NIC_ALIAS under any ``TEMPLATE`` child, in document order."""
    return (tuple(parse_nic(e) for e in root.findall("TEMPLATE/NIC")),
            tuple(parse_alias(e) for e in root.findall("TEMPLATE/NIC_ALIAS")))


def _vm_root(root: Any) -> int:
    if root.tag != "VM":
        raise InputError(f"expected a <VM> document, got <{root.tag}>")
    return validate.object_id(child_text(root, "ID"), "VM ID")


def parse_vm(root: Any) -> VM:
    """Build a :class:`VM` from a whole ``<VM>`` element (STATE, history SEQ and HID
    required)."""
    vm_id = _vm_root(root)
    nics, aliases = _nics_and_aliases(root)
    history = tuple(parse_history(e) for e in root.findall("HISTORY_RECORDS/HISTORY"))
    return VM(
        id=vm_id,
        name=child_text(root, "NAME"),
        state=_int(root, "STATE", "VM STATE"),
        lcm_state=_int(root, "LCM_STATE", "VM LCM_STATE", required=False) or 0,
        deploy_id=child_text(root, "DEPLOY_ID"),
        nics=nics,
        aliases=aliases,
        history=tuple(sorted(history, key=lambda h: h.seq)),
    )


def parse_vnm_view(root: Any) -> VM:
    """Build a :class:`VM` from the ``<VM>`` a VNM action reads (the VNM view, or a whole
    VM): ID, DEPLOY_ID, NICs and aliases; STATE, NAME and history are not read."""
    vm_id = _vm_root(root)
    nics, aliases = _nics_and_aliases(root)
    return VM(id=vm_id, name=child_text(root, "NAME"), state=None, lcm_state=0,
              deploy_id=child_text(root, "DEPLOY_ID"), nics=nics, aliases=aliases,
              history=())


# -- networks ----------------------------------------------------------------------------------

class AddressRange(NamedTuple):
    """One AR of a network, with the custom attributes a packet range carries."""

    vnet_id: int
    ar_id: int
    ipam_mad: str
    reservation_id: Optional[str]  # the AR's DEPLOY_ID: a Packet reservation UUID
    project_id: Optional[str]
    token: Optional[str] = None  # left out of repr()
    leases: Mapping[Address, int] = NO_LEASES  # leased IP -> VM id
    first_ip: str = ""  # the AR's IP and SIZE as oned has them: for a packet AR, the block's
    size: str = ""  # network address and size (checked against the reservation it names)
    # for the AR of a reservation network (onevnet reserve): (network, AR) it was reserved
    # from, the VNET's PARENT_NETWORK_ID and the AR's PARENT_NETWORK_AR_ID
    parent: Optional[Tuple[int, int]] = None

    def __repr__(self) -> str:
        return log.record_repr(self, "token")


def parse_vnet(root: Any) -> Dict[int, AddressRange]:
    """The address ranges of a ``<VNET>`` element, by AR_ID.

    The AR of a reservation network (``onevnet reserve``) is oned's copy of the parent's AR
    (DEPLOY_ID, PACKET_PROJECT, PACKET_TOKEN... included) without IPAM_MAD, with the
    reserved part's IP and SIZE and ``PARENT_NETWORK_AR_ID``; the network names its parent
    in ``PARENT_NETWORK_ID``. Such an AR gets ``parent`` = (parent network, parent AR)."""
    if root.tag != "VNET":
        raise InputError(f"expected a <VNET> document, got <{root.tag}>")
    vnet_id = validate.object_id(child_text(root, "ID"), "VNET ID")
    parent_vnet = child_text(root, "PARENT_NETWORK_ID")
    ranges: Dict[int, AddressRange] = {}
    for ar in root.findall("AR_POOL/AR"):
        ar_id = validate.object_id(child_text(ar, "AR_ID"), f"network {vnet_id} AR_ID")
        parent = None
        parent_ar = child_text(ar, "PARENT_NETWORK_AR_ID")
        if parent_vnet and parent_ar:
            parent = (validate.object_id(parent_vnet, f"network {vnet_id} PARENT_NETWORK_ID"),
                      validate.object_id(parent_ar, f"network {vnet_id} AR {ar_id} "
                                                    "PARENT_NETWORK_AR_ID"))
        leases: Dict[Address, int] = {}
        for lease in ar.findall("LEASES/LEASE"):
            ip, vm_id = child_text(lease, "IP"), child_text(lease, "VM")
            if not ip or not vm_id:
                continue
            try:
                leases[ipaddress.IPv4Address(ip)] = int(vm_id)
            except ValueError:
                continue  # IPv6 leases and malformed entries are not ours to judge
        ranges[ar_id] = AddressRange(
            vnet_id=vnet_id,
            ar_id=ar_id,
            ipam_mad=child_text(ar, "IPAM_MAD"),
            reservation_id=child_text(ar, "DEPLOY_ID") or None,
            project_id=child_text(ar, "PACKET_PROJECT") or None,
            token=child_text(ar, "PACKET_TOKEN") or None,
            leases=leases,
            first_ip=child_text(ar, "IP"),
            size=child_text(ar, "SIZE"),
            parent=parent,
        )
    return ranges


# -- hosts -------------------------------------------------------------------------------------

class Host(NamedTuple):
    """A host and the Packet device it is (None: not a Packet device)."""

    id: int
    name: str
    device_id: Optional[str]


def parse_host(root: Any) -> Host:
    """A ``<HOST>`` element; its device is ``TEMPLATE/PROVISION/DEPLOY_ID`` (a UUID)."""
    if root.tag != "HOST":
        raise InputError(f"expected a <HOST> document, got <{root.tag}>")
    host_id = validate.object_id(child_text(root, "ID"), "HOST ID")
    name = child_text(root, "NAME")
    device = child_text(root, "TEMPLATE/PROVISION/DEPLOY_ID")
    if not device:
        return Host(host_id, name, None)
    return Host(host_id, name, validate.uuid(device, f"host {host_id} PROVISION/DEPLOY_ID"))


# -- IPAM driver actions -----------------------------------------------------------------------

class IpamActionData(NamedTuple):
    """What oned sends an IPAM driver action on stdin (``IPAM_DRIVER_ACTION_DATA``): the
    AR's single-valued attributes (names upper-cased, values stripped, in document order in
    ``ar_order``) and those of the ADDRESS part, when there is one."""

    ar: Dict[str, str]
    ar_order: Tuple[str, ...]
    address: Dict[str, str]


def _leaves(element: Any) -> Tuple[Dict[str, str], Tuple[str, ...]]:
    values: Dict[str, str] = {}
    order = []
    for child in element:
        if not isinstance(child.tag, str) or len(child):
            continue  # comments (lxml) and vectors
        name = child.tag.upper()
        if name not in values:
            order.append(name)
        values[name] = (child.text or "").strip()
    return values, tuple(order)


def parse_ipam_action_data(root: Any) -> IpamActionData:
    """An ``<IPAM_DRIVER_ACTION_DATA>`` element: its AR (required) and ADDRESS parts."""
    if root.tag != "IPAM_DRIVER_ACTION_DATA":
        raise InputError(f"expected IPAM_DRIVER_ACTION_DATA on stdin, got {root.tag}")
    ar = root.find("AR")
    if ar is None:
        raise InputError("IPAM_DRIVER_ACTION_DATA has no AR")
    values, order = _leaves(ar)
    address = root.find("ADDRESS")
    return IpamActionData(values, order, _leaves(address)[0] if address is not None else {})
