"""The objects an emulated oned keeps, and the XML oned 5.12 serves for them.

State lives in :class:`OnedState` (hosts, virtual networks with address ranges and leases,
VMs with NICs, NIC aliases and history records, hooks with their execution log). Every
public method takes the state's lock, so the XML-RPC server threads and a scenario driver can
share one state.

XML follows oned 5.12 (``share/doc/xsd`` of release-5.12.13): top-level element order of the
schemas, template values in CDATA sections, template attributes (NIC, NIC_ALIAS, AR...) in
alphabetical order as oned's attribute maps give them, no namespace. Encrypted attributes
(``AR/PACKET_TOKEN`` of a network, ``PROVISION/PACKET_TOKEN`` of a host) are served
encrypted unless the caller asks for ``decrypt``, like oned with ``VNET_ENCRYPTED_ATTR`` and
``HOST_ENCRYPTED_ATTR``; the encrypted form is an opaque, stable base64 string keyed per
state (it is not oned's AES, only its shape).

Templates given to it (hooks, VMs) are read with :mod:`packet_provider.core.onetemplate`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import os
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence

from packet_lab.serving import write_state_file
from packet_provider.core.onetemplate import TemplateError, TemplateValue, parse_template
from packet_provider.hook.registration import ON_STATES, as_stored

# -- numeric values of oned 5.12 (include/VirtualMachine.h, include/VMActions.h) ----------

VM_STATES = {
    "INIT": 0, "PENDING": 1, "HOLD": 2, "ACTIVE": 3, "STOPPED": 4, "SUSPENDED": 5, "DONE": 6,
    "POWEROFF": 8, "UNDEPLOYED": 9, "CLONING": 10, "CLONING_FAILURE": 11,
}
LCM_STATES = {
    "LCM_INIT": 0, "PROLOG": 1, "BOOT": 2, "RUNNING": 3, "MIGRATE": 4, "SAVE_STOP": 5,
    "SAVE_SUSPEND": 6, "SAVE_MIGRATE": 7, "PROLOG_MIGRATE": 8, "PROLOG_RESUME": 9,
    "EPILOG_STOP": 10, "EPILOG": 11, "SHUTDOWN": 12, "CLEANUP_RESUBMIT": 15, "UNKNOWN": 16,
    "HOTPLUG": 17, "SHUTDOWN_POWEROFF": 18, "BOOT_UNKNOWN": 19, "BOOT_POWEROFF": 20,
    "BOOT_SUSPENDED": 21, "BOOT_STOPPED": 22, "CLEANUP_DELETE": 23, "HOTPLUG_SNAPSHOT": 24,
    "HOTPLUG_NIC": 25, "BOOT_MIGRATE": 35, "BOOT_FAILURE": 36, "BOOT_MIGRATE_FAILURE": 37,
    "PROLOG_FAILURE": 39, "EPILOG_FAILURE": 40, "HOTPLUG_NIC_POWEROFF": 65,
}
HISTORY_ACTIONS = {
    "none": 0, "migrate": 1, "live-migrate": 2, "shutdown": 3, "shutdown-hard": 4,
    "undeploy": 5, "undeploy-hard": 6, "stop": 9, "suspend": 10, "resume": 11, "boot": 12,
    "delete": 13, "reboot": 15, "poweroff": 19, "poweroff-hard": 20, "nic-attach": 23,
    "nic-detach": 24, "terminate": 27, "terminate-hard": 28, "deploy": 30,
    "alias-attach": 46, "alias-detach": 47, "poweroff-migrate": 48,
}

# oned.conf of 5.12 (with the packet provision driver): attributes encrypted at rest
VNET_ENCRYPTED_ATTR = ("AR/PACKET_TOKEN",)
HOST_ENCRYPTED_ATTR = ("PROVISION/PACKET_TOKEN",)

MAC_PREFIX = "02:00"
VERSION = "5.12.13"



class OnedError(Exception):
    """A failed oned request: ``code`` is oned's error code (0x100, 0x400...)."""

    AUTHENTICATION = 0x0100
    AUTHORIZATION = 0x0200
    NO_EXISTS = 0x0400
    ACTION = 0x0800
    XML_RPC_API = 0x1000
    INTERNAL = 0x2000

    def __init__(self, code: int, message: str, object_id: int = -1) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.object_id = object_id


# -- XML writing -------------------------------------------------------------------------------

# characters XML 1.0 cannot carry at all (not even escaped)
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def cdata(value: object) -> str:
    text = _NOT_XML.sub("\ufffd", str(value))
    return "<![CDATA[" + text.replace("]]>", "]]]]><![CDATA[>") + "]]>"


def _escape(value: object) -> str:
    text = _NOT_XML.sub("\ufffd", str(value))
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def el(name: str, value: object, raw: bool = False) -> str:
    """``<NAME>value</NAME>``: text in CDATA, or plain escaped text when ``raw``."""
    body = _escape(value) if raw else cdata(value)
    return f"<{name}>{body}</{name}>"


def attrs_xml(attrs: Mapping[str, TemplateValue]) -> str:
    """Template attributes in alphabetical order (oned's attribute maps are sorted)."""
    parts = []
    for name in sorted(attrs):
        value = attrs[name]
        if isinstance(value, Mapping):
            parts.append(f"<{name}>{attrs_xml(value)}</{name}>")
        elif isinstance(value, list):
            for item in value:
                parts.append(f"<{name}>{attrs_xml(item)}</{name}>")
        else:
            parts.append(el(name, value))
    return "".join(parts)


_PERMISSIONS = (
    "<PERMISSIONS><OWNER_U>1</OWNER_U><OWNER_M>1</OWNER_M><OWNER_A>0</OWNER_A>"
    "<GROUP_U>0</GROUP_U><GROUP_M>0</GROUP_M><GROUP_A>0</GROUP_A>"
    "<OTHER_U>0</OTHER_U><OTHER_M>0</OTHER_M><OTHER_A>0</OTHER_A></PERMISSIONS>"
)
_OWNER = "<UID>0</UID><GID>0</GID><UNAME>oneadmin</UNAME><GNAME>oneadmin</GNAME>"


# -- objects -----------------------------------------------------------------------------------

@dataclass
class Host:
    id: int
    name: str
    template: OrderedDict[str, TemplateValue] = field(default_factory=OrderedDict)
    cluster_id: int = 0
    state: int = 2  # MONITORED

    @property
    def deploy_id(self) -> Optional[str]:
        provision = self.template.get("PROVISION")
        return provision.get("DEPLOY_ID") if isinstance(provision, Mapping) else None


@dataclass
class Lease:
    vm_id: int  # the owner's id: a VM's, or a reservation network's (kind "VNET")
    ip: str
    mac: str
    kind: str = "VM"


@dataclass
class AddressRange:
    ar_id: int
    attrs: OrderedDict[str, str]  # every attribute but AR_ID and the lease map
    leases: Dict[int, Lease] = field(default_factory=dict)  # index from the first IP

    @property
    def ipam_mad(self) -> str:
        return self.attrs.get("IPAM_MAD", "")

    @property
    def size(self) -> int:
        return int(self.attrs.get("SIZE", "0") or 0)

    @property
    def first_ip(self) -> ipaddress.IPv4Address:
        return ipaddress.IPv4Address(self.attrs["IP"])

    def first_mac(self) -> int:
        mac = self.attrs.get("MAC")
        if mac:
            return int(mac.replace(":", ""), 16)
        prefix = int(MAC_PREFIX.replace(":", ""), 16)
        return (prefix << 32) | int(self.first_ip)

    def index_of(self, ip: str) -> Optional[int]:
        try:
            index = int(ipaddress.IPv4Address(ip)) - int(self.first_ip)
        except ValueError:
            return None
        return index if 0 <= index < self.size else None

    def ip_at(self, index: int) -> str:
        return str(self.first_ip + index)

    def mac_at(self, index: int) -> str:
        return format_mac(self.first_mac() + index)

    def free_index(self) -> Optional[int]:
        return next((i for i in range(self.size) if i not in self.leases), None)

    def ipam_attrs(self) -> OrderedDict[str, str]:
        """What oned sends an IPAM driver as ``<AR>`` (checked against the real 5.12.13): every
        stored attribute with AR_ID, decrypted, in name order, then MAC_END, IP_END and
        USED_LEASES (the lease count before the change at hand); no lease map."""
        stored = dict(self.attrs, AR_ID=str(self.ar_id))
        out: OrderedDict[str, str] = OrderedDict(sorted(stored.items()))
        if self.size > 0:
            out["MAC_END"] = self.mac_at(self.size - 1)
            if self.attrs.get("IP"):
                out["IP_END"] = self.ip_at(self.size - 1)
        out["USED_LEASES"] = str(len(self.leases))
        return out


def format_mac(value: int) -> str:
    raw = f"{value & 0xFFFFFFFFFFFF:012x}"
    return ":".join(raw[i:i + 2] for i in range(0, 12, 2))


@dataclass
class VNet:
    id: int
    name: str
    vn_mad: str
    bridge: str
    template: OrderedDict[str, TemplateValue] = field(default_factory=OrderedDict)
    ars: List[AddressRange] = field(default_factory=list)
    next_ar_id: int = 0
    parent_id: Optional[int] = None  # PARENT_NETWORK_ID of a reservation network

    def ar(self, ar_id: int) -> AddressRange:
        for ar in self.ars:
            if ar.ar_id == ar_id:
                return ar
        raise OnedError(OnedError.NO_EXISTS, f"Address Range {ar_id} does not exist", self.id)


@dataclass
class VM:
    id: int
    name: str
    state: int = VM_STATES["PENDING"]
    lcm_state: int = 0
    prev_state: int = VM_STATES["PENDING"]
    prev_lcm_state: int = 0
    deploy_id: str = ""
    stime: int = 0
    etime: int = 0
    nics: List[OrderedDict[str, str]] = field(default_factory=list)
    aliases: List[OrderedDict[str, str]] = field(default_factory=list)
    template: OrderedDict[str, TemplateValue] = field(default_factory=OrderedDict)
    history: List[OrderedDict[str, str]] = field(default_factory=list)

    def set_state(self, state: int, lcm_state: int) -> None:
        self.prev_state, self.prev_lcm_state = self.state, self.lcm_state
        self.state, self.lcm_state = state, lcm_state

    @property
    def host_id(self) -> Optional[int]:
        return int(self.history[-1]["HID"]) if self.history else None

    def all_nics(self) -> List[OrderedDict[str, str]]:
        return list(self.nics) + list(self.aliases)


@dataclass
class ExecutionRecord:
    hook_id: int
    execution_id: int
    timestamp: int
    arguments: str
    command: str
    stdout: str
    stderr: str
    code: int
    remote_host: str = ""
    retry: bool = False


@dataclass
class Hook:
    id: int
    name: str
    type: str
    template: OrderedDict[str, TemplateValue]
    log: List[ExecutionRecord] = field(default_factory=list)
    next_execution_id: int = 0

    def get(self, name: str, default: str = "") -> str:
        value = self.template.get(name, default)
        return value if isinstance(value, str) else default


HOOK_TYPES = ("state", "api")
HOOK_LOG_RETENTION = 20


# -- the state ------------------------------------------------------------------------------

class OnedState:
    """Everything an emulated oned knows. Thread-safe: one re-entrant lock guards it all."""

    def __init__(self, state_file: Optional[str] = None, key: Optional[bytes] = None) -> None:
        self.lock = threading.RLock()
        self.key = key or os.urandom(32)
        self.state_file = state_file
        self.reset()
        if state_file and os.path.exists(state_file):
            self.load(state_file)

    def reset(self) -> None:
        """Forget every object (ids start again at 0)."""
        with self.lock:
            self.hosts: Dict[int, Host] = {}
            self.vnets: Dict[int, VNet] = {}
            self.vms: Dict[int, VM] = {}
            self.hooks: Dict[int, Hook] = {}
            self._next = {"host": 0, "vnet": 0, "vm": 0, "hook": 0}

    def _new_id(self, kind: str) -> int:
        value = self._next[kind]
        self._next[kind] = value + 1
        return value

    # -- encryption (shape of oned's, not its cipher) --

    def encrypt(self, value: str) -> str:
        data = value.encode()
        nonce = hmac.new(self.key, b"nonce" + data, hashlib.sha256).digest()[:16]
        stream = b""
        counter = 0
        while len(stream) < len(data):
            stream += hashlib.sha256(self.key + nonce + counter.to_bytes(4, "big")).digest()
            counter += 1
        return base64.b64encode(nonce + bytes(a ^ b for a, b in zip(data, stream))).decode()

    # -- hosts --

    def add_host(self, name: str, deploy_id: Optional[str] = None,
                 provision: Optional[Mapping[str, str]] = None, cluster_id: int = 0) -> int:
        """Add a host; ``deploy_id`` (the Packet device id) goes to TEMPLATE/PROVISION."""
        with self.lock:
            host_id = self._new_id("host")
            template: OrderedDict[str, TemplateValue] = OrderedDict(
                [("HOSTNAME", name), ("HYPERVISOR", "kvm"), ("IM_MAD", "kvm"),
                 ("VM_MAD", "kvm")])
            prov: OrderedDict[str, str] = OrderedDict(provision or {})
            if deploy_id is not None:
                prov["DEPLOY_ID"] = deploy_id
            if prov:
                template["PROVISION"] = prov
                template["PM_MAD"] = "packet"
            self.hosts[host_id] = Host(host_id, name, template, cluster_id)
            self._changed()
            return host_id

    def host_by_name(self, name: str) -> Optional[Host]:
        with self.lock:
            return next((h for h in self.hosts.values() if h.name == name), None)

    def host(self, host_id: int) -> Host:
        with self.lock:
            if host_id not in self.hosts:
                raise OnedError(OnedError.NO_EXISTS, f"Error getting host [{host_id}].", host_id)
            return self.hosts[host_id]

    # -- networks --

    def add_vnet(self, name: str, vn_mad: str = "alias_sdnat", bridge: str = "br0",
                 template: Optional[Mapping[str, str]] = None) -> int:
        with self.lock:
            vnet_id = self._new_id("vnet")
            tmpl: OrderedDict[str, TemplateValue] = OrderedDict(
                [("BRIDGE", bridge), ("VN_MAD", vn_mad)])
            tmpl.update(template or {})
            self.vnets[vnet_id] = VNet(vnet_id, name, vn_mad, bridge, tmpl)
            self._changed()
            return vnet_id

    def vnet(self, vnet_id: int) -> VNet:
        with self.lock:
            if vnet_id not in self.vnets:
                raise OnedError(OnedError.NO_EXISTS,
                                f"Error getting virtual network [{vnet_id}].", vnet_id)
            return self.vnets[vnet_id]

    def add_ar(self, vnet_id: int, attrs: Mapping[str, str]) -> int:
        """Add an address range as given (``TYPE``, ``IP``, ``SIZE``, custom attributes).
        oned's checks: IP4 ranges need a valid IP and a positive SIZE."""
        with self.lock:
            vnet = self.vnet(vnet_id)
            clean: OrderedDict[str, str] = OrderedDict(
                (k.upper(), str(v)) for k, v in attrs.items() if k.upper() != "AR_ID")
            clean.setdefault("TYPE", "IP4")
            check_ar(clean)
            if "MAC" not in clean and clean.get("IP"):
                # oned stores the first MAC it derives from the first IP (MAC_PREFIX + IP)
                prefix = int(MAC_PREFIX.replace(":", ""), 16)
                clean["MAC"] = format_mac((prefix << 32) | int(ipaddress.IPv4Address(
                    clean["IP"])))
            ar = AddressRange(vnet.next_ar_id, clean)
            vnet.next_ar_id += 1
            vnet.ars.append(ar)
            self._changed()
            return ar.ar_id

    def reserve(self, parent_id: int, size: int, name: str, ar_id: int = 0) -> int:
        """``onevnet reserve <parent> --size N --name NAME`` (into a new network), as oned
        5.12 does it: the first N free addresses of the parent's AR are leased to the new
        network (LEASE/VNET), whose one AR is a copy of the parent's without IPAM_MAD, with
        the reserved part's IP, MAC and SIZE and PARENT_NETWORK_AR_ID; the new network
        records its parent in PARENT_NETWORK_ID. (oned asks the IPAM driver of a packet AR
        for the addresses first; that is the scenario's part, not done here.)"""
        with self.lock:
            parent = self.vnet(parent_id)
            source = parent.ar(ar_id)
            start = next((i for i in range(source.size - size + 1)
                          if all(j not in source.leases for j in range(i, i + size))), None)
            if size < 1 or start is None:
                raise OnedError(OnedError.ACTION, "Not enough free addresses in an address "
                                "range", parent_id)
            vnet_id = self.add_vnet(name, parent.vn_mad, parent.bridge,
                                    OrderedDict(parent.template))
            vnet = self.vnets[vnet_id]
            vnet.parent_id = parent_id
            attrs = OrderedDict((k, v) for k, v in source.attrs.items() if k != "IPAM_MAD")
            attrs.update(IP=source.ip_at(start), MAC=source.mac_at(start), SIZE=str(size),
                         PARENT_NETWORK_AR_ID=str(source.ar_id))
            vnet.ars.append(AddressRange(0, attrs))
            vnet.next_ar_id = 1
            for index in range(start, start + size):
                source.leases[index] = Lease(vnet_id, source.ip_at(index),
                                             source.mac_at(index), "VNET")
            self._changed()
            return vnet_id

    def remove_ar(self, vnet_id: int, ar_id: int) -> None:
        with self.lock:
            vnet = self.vnet(vnet_id)
            ar = vnet.ar(ar_id)
            if ar.leases:
                raise OnedError(OnedError.ACTION,
                                f"Address Range {ar_id} has leases in use", vnet_id)
            vnet.ars.remove(ar)
            self._changed()

    # -- VMs --

    def add_vm(self, name: str, template: Optional[Mapping[str, TemplateValue]] = None) -> VM:
        with self.lock:
            vm_id = self._new_id("vm")
            tmpl: OrderedDict[str, TemplateValue] = OrderedDict(
                [("CPU", "1"), ("MEMORY", "128"), ("VMID", str(vm_id))])
            tmpl.update(template or {})
            vm = VM(vm_id, name or f"one-{vm_id}", stime=int(time.time()), template=tmpl)
            self.vms[vm_id] = vm
            self._changed()
            return vm

    def vm(self, vm_id: int) -> VM:
        with self.lock:
            if vm_id not in self.vms:
                raise OnedError(OnedError.NO_EXISTS,
                                f"Error getting virtual machine [{vm_id}].", vm_id)
            return self.vms[vm_id]

    # -- leases and NICs (what oned does locally; IPAM calls are the scenario's part) --

    def pick_ar(self, vnet_id: int, ip: Optional[str] = None,
                ar_id: Optional[int] = None) -> AddressRange:
        """The AR a lease comes from: ``ar_id`` if given, else the AR holding ``ip``, else
        the first AR with a free address."""
        with self.lock:
            vnet = self.vnet(vnet_id)
            if ar_id is not None:
                return vnet.ar(ar_id)
            for ar in vnet.ars:
                if ip is not None and ar.index_of(ip) is not None:
                    return ar
                if ip is None and ar.free_index() is not None:
                    return ar
            what = f"address {ip}" if ip else "free address"
            raise OnedError(OnedError.ACTION,
                            f"Cannot get IP/MAC lease from virtual network {vnet_id}: "
                            f"no {what}", vnet_id)

    def take_lease(self, vnet_id: int, ar_id: int, vm_id: int,
                   ip: Optional[str] = None) -> Lease:
        """Record a lease in the AR (oned's ALLOCATED map): ``ip`` or the first free one."""
        with self.lock:
            ar = self.vnet(vnet_id).ar(ar_id)
            index = ar.index_of(ip) if ip is not None else ar.free_index()
            if index is None:
                raise OnedError(OnedError.ACTION,
                                f"Address {ip or '(any)'} not available in AR {ar_id} of "
                                f"virtual network {vnet_id}", vnet_id)
            if index in ar.leases:
                raise OnedError(OnedError.ACTION,
                                f"Address {ar.ip_at(index)} is already in use", vnet_id)
            lease = Lease(vm_id, ar.ip_at(index), ar.mac_at(index))
            ar.leases[index] = lease
            self._changed()
            return lease

    def release_lease(self, vnet_id: int, ar_id: int, ip: str) -> None:
        with self.lock:
            vnet = self.vnets.get(vnet_id)
            if vnet is None:
                return
            for ar in vnet.ars:
                if ar.ar_id == ar_id:
                    index = ar.index_of(ip)
                    if index is not None:
                        ar.leases.pop(index, None)
            self._changed()

    def _nic_common(self, vnet: VNet, ar: AddressRange, lease: Lease,
                    nic_id: int) -> OrderedDict[str, str]:
        return OrderedDict([
            ("AR_ID", str(ar.ar_id)), ("BRIDGE", vnet.bridge), ("BRIDGE_TYPE", "linux"),
            ("CLUSTER_ID", "0"), ("IP", lease.ip), ("MAC", lease.mac), ("NETWORK", vnet.name),
            ("NETWORK_ID", str(vnet.id)), ("NIC_ID", str(nic_id)),
            ("SECURITY_GROUPS", "0"), ("VN_MAD", vnet.vn_mad),
        ] + ([("PARENT_NETWORK_ID", str(vnet.parent_id))] if vnet.parent_id is not None
             else []))

    def _next_nic_id(self, vm: VM) -> int:
        used = [int(n["NIC_ID"]) for n in vm.all_nics()]
        return max(used) + 1 if used else 0

    def add_nic(self, vm_id: int, vnet_id: int, ar_id: int, lease: Lease) -> OrderedDict:
        """Append a NIC using an already taken lease; returns its attributes."""
        with self.lock:
            vm = self.vm(vm_id)
            vnet = self.vnet(vnet_id)
            nic_id = self._next_nic_id(vm)
            nic = self._nic_common(vnet, vnet.ar(ar_id), lease, nic_id)
            nic["NAME"] = f"NIC{nic_id}"
            nic["TARGET"] = f"one-{vm.id}-{nic_id}"
            vm.nics.append(nic)
            self._changed()
            return nic

    def add_alias(self, vm_id: int, parent_nic_id: int, vnet_id: int, ar_id: int,
                  lease: Lease, external: bool = True, attach: bool = False) -> OrderedDict:
        """Append a NIC_ALIAS of NIC ``parent_nic_id`` and update the parent's ALIAS_IDS."""
        with self.lock:
            vm = self.vm(vm_id)
            vnet = self.vnet(vnet_id)
            parent = self.nic(vm_id, parent_nic_id)
            nic_id = self._next_nic_id(vm)
            alias_id = len([a for a in vm.aliases if a["PARENT_ID"] == parent["NIC_ID"]])
            alias = self._nic_common(vnet, vnet.ar(ar_id), lease, nic_id)
            # as oned 5.12.13 names it: NIC<parent>_ALIAS<the alias's own NIC_ID>
            alias.update([("ALIAS_ID", str(alias_id)), ("NAME", f"{parent['NAME']}_ALIAS"
                                                               f"{nic_id}"),
                          ("PARENT", parent["NAME"]), ("PARENT_ID", parent["NIC_ID"]),
                          ("TARGET", f"one-{vm.id}-{nic_id}")])
            if external:
                alias["EXTERNAL"] = "YES"
            if attach:
                alias["ATTACH"] = "YES"
            vm.aliases.append(alias)
            self._update_alias_ids(vm, parent)
            self._changed()
            return alias

    def nic(self, vm_id: int, nic_id: int) -> OrderedDict[str, str]:
        """A NIC (not an alias) of a VM by NIC_ID."""
        with self.lock:
            for nic in self.vm(vm_id).nics:
                if nic["NIC_ID"] == str(nic_id):
                    return nic
            raise OnedError(OnedError.NO_EXISTS, f"NIC {nic_id} does not exist", vm_id)

    def alias(self, vm_id: int, nic_id: int) -> OrderedDict[str, str]:
        with self.lock:
            for alias in self.vm(vm_id).aliases:
                if alias["NIC_ID"] == str(nic_id):
                    return alias
            raise OnedError(OnedError.NO_EXISTS, f"NIC_ALIAS {nic_id} does not exist", vm_id)

    def remove_alias(self, vm_id: int, nic_id: int) -> OrderedDict[str, str]:
        with self.lock:
            vm = self.vm(vm_id)
            alias = self.alias(vm_id, nic_id)
            vm.aliases.remove(alias)
            for nic in vm.nics:
                if nic["NIC_ID"] == alias["PARENT_ID"]:
                    self._update_alias_ids(vm, nic)
            self._changed()
            return alias

    @staticmethod
    def _update_alias_ids(vm: VM, parent: OrderedDict[str, str]) -> None:
        ids = [a["NIC_ID"] for a in vm.aliases if a["PARENT_ID"] == parent["NIC_ID"]]
        if ids:
            parent["ALIAS_IDS"] = ",".join(ids)
        else:
            parent.pop("ALIAS_IDS", None)

    def add_history(self, vm_id: int, host_id: int) -> OrderedDict[str, str]:
        """Open a history record on ``host_id`` (ACTION none): the VM's current host."""
        with self.lock:
            vm = self.vm(vm_id)
            host = self.host(host_id)
            now = int(time.time())
            record: OrderedDict[str, str] = OrderedDict([
                ("OID", str(vm.id)), ("SEQ", str(len(vm.history))), ("HOSTNAME", host.name),
                ("HID", str(host.id)), ("CID", str(host.cluster_id)), ("STIME", str(now)),
                ("ETIME", "0"), ("VM_MAD", "kvm"), ("TM_MAD", "ssh"), ("DS_ID", "0"),
                ("PSTIME", str(now)), ("PETIME", str(now)), ("RSTIME", str(now)),
                ("RETIME", "0"), ("ESTIME", "0"), ("EETIME", "0"), ("ACTION", "0"),
                ("UID", "-1"), ("GID", "-1"), ("REQUEST_ID", "-1"),
            ])
            vm.history.append(record)
            self._changed()
            return record

    def set_action(self, vm_id: int, action: str) -> None:
        """Mark the current history record with the action being done (oned's
        set_action), e.g. ``live-migrate`` or ``alias-detach``."""
        with self.lock:
            vm = self.vm(vm_id)
            if vm.history:
                vm.history[-1]["ACTION"] = str(HISTORY_ACTIONS[action])
                vm.history[-1]["UID"] = "0"
                vm.history[-1]["GID"] = "0"
            self._changed()

    def close_history(self, vm_id: int, copy: bool) -> None:
        """End the current history record; with ``copy`` open a new one on the same host
        (oned's close_cp_history after hotplug, poweroff, resume)."""
        with self.lock:
            vm = self.vm(vm_id)
            if not vm.history:
                return
            now = str(int(time.time()))
            current = vm.history[-1]
            current["ETIME"] = now
            current["RETIME"] = now
            if copy:
                record = OrderedDict(current)
                record.update([("SEQ", str(len(vm.history))), ("STIME", now), ("ETIME", "0"),
                               ("PSTIME", "0"), ("PETIME", "0"), ("RSTIME", now),
                               ("RETIME", "0"), ("ACTION", "0"), ("UID", "-1"),
                               ("GID", "-1")])
                vm.history.append(record)
            self._changed()

    # -- hooks --

    def allocate_hook(self, template_text: str) -> int:
        """Create a hook from its template, with oned's checks (NAME, TYPE, COMMAND and, for
        state hooks, RESOURCE and ON)."""
        try:
            attrs = parse_template(template_text)
        except TemplateError as exc:
            raise OnedError(OnedError.INTERNAL, f"Parse error: {exc}") from None
        return self.add_hook(OrderedDict(attrs))

    def add_hook(self, template: Mapping[str, TemplateValue]) -> int:
        tmpl: OrderedDict[str, TemplateValue] = OrderedDict(
            (k.upper(), v) for k, v in template.items())
        name = tmpl.pop("NAME", "")
        hook_type = str(tmpl.get("TYPE", "")).lower()
        if not isinstance(name, str) or not name:
            raise OnedError(OnedError.INTERNAL, "No NAME in template for Hook.")
        if hook_type not in HOOK_TYPES:
            raise OnedError(OnedError.INTERNAL,
                            "Error creating hook: TYPE must be one of state, api")
        if not tmpl.get("COMMAND"):
            raise OnedError(OnedError.INTERNAL, "Error creating hook: COMMAND is mandatory")
        if hook_type == "state":
            if str(tmpl.get("RESOURCE", "")).upper() not in ("VM", "HOST", "IMAGE"):
                raise OnedError(OnedError.INTERNAL,
                                "Error creating hook: invalid or missing RESOURCE")
            on = str(tmpl.get("ON", "")).upper()
            if not on:
                raise OnedError(OnedError.INTERNAL, "Error creating hook: ON is mandatory")
            if on == "CUSTOM" and not (tmpl.get("STATE") and tmpl.get("LCM_STATE")):
                raise OnedError(OnedError.INTERNAL,
                                "Error creating hook: CUSTOM hooks need STATE and LCM_STATE")
            if on != "CUSTOM" and on not in ON_STATES:
                raise OnedError(OnedError.INTERNAL,
                                f"Error creating hook: Unkown state condition: {on}")
            # like oned: ON is not stored; STATE and LCM_STATE say when the hook runs
            stored = as_stored({k: str(v) for k, v in tmpl.items()
                                if k in ("ON", "STATE", "LCM_STATE")})
            tmpl.pop("ON")
            tmpl["STATE"], tmpl["LCM_STATE"] = stored["STATE"], stored["LCM_STATE"]
        tmpl["TYPE"] = hook_type
        with self.lock:
            for hook in self.hooks.values():
                if hook.name == name:
                    raise OnedError(OnedError.ACTION,
                                    f"NAME is already taken by HOOK {hook.id}.", hook.id)
            hook_id = self._new_id("hook")
            self.hooks[hook_id] = Hook(hook_id, name, hook_type, tmpl)
            self._changed()
            return hook_id

    def hook(self, hook_id: int) -> Hook:
        with self.lock:
            if hook_id not in self.hooks:
                raise OnedError(OnedError.NO_EXISTS, f"Error getting hook [{hook_id}].", hook_id)
            return self.hooks[hook_id]

    def update_hook(self, hook_id: int, template_text: str, append: bool) -> None:
        try:
            attrs = OrderedDict(parse_template(template_text))
        except TemplateError as exc:
            raise OnedError(OnedError.INTERNAL, f"Parse error: {exc}", hook_id) from None
        with self.lock:
            hook = self.hook(hook_id)
            attrs.pop("NAME", None)
            attrs.pop("TYPE", None)
            if append:
                hook.template.update(attrs)
            else:
                attrs["TYPE"] = hook.type
                hook.template = attrs
            self._changed()

    def delete_hook(self, hook_id: int) -> None:
        with self.lock:
            self.hook(hook_id)
            del self.hooks[hook_id]
            self._changed()

    def record_execution(self, hook_id: int, arguments: str, command: str, stdout: str,
                         stderr: str, code: int, remote_host: str = "",
                         retry: bool = False) -> ExecutionRecord:
        with self.lock:
            hook = self.hook(hook_id)
            record = ExecutionRecord(hook_id, hook.next_execution_id, int(time.time()),
                                     arguments, command, stdout, stderr, code, remote_host,
                                     retry)
            hook.next_execution_id += 1
            hook.log.append(record)
            del hook.log[:-HOOK_LOG_RETENTION]
            self._changed()
            return record

    def execution(self, hook_id: int, execution_id: int) -> ExecutionRecord:
        with self.lock:
            for record in self.hook(hook_id).log:
                if record.execution_id == execution_id:
                    return record
            raise OnedError(OnedError.NO_EXISTS,
                            f"Error getting execution {execution_id} of hook [{hook_id}].",
                            hook_id)

    # -- XML --

    def host_xml(self, host_id: int, decrypt: bool = False) -> str:
        with self.lock:
            host = self.host(host_id)
            vms = [vm.id for vm in self.vms.values()
                   if vm.host_id == host.id and vm.state not in (VM_STATES["DONE"],)]
            template = self._encrypted(host.template, HOST_ENCRYPTED_ATTR, decrypt)
            return (
                f"<HOST><ID>{host.id}</ID>{el('NAME', host.name, raw=True)}"
                f"<STATE>{host.state}</STATE><PREV_STATE>{host.state}</PREV_STATE>"
                f"{el('IM_MAD', 'kvm')}{el('VM_MAD', 'kvm')}"
                f"<CLUSTER_ID>{host.cluster_id}</CLUSTER_ID><CLUSTER>default</CLUSTER>"
                "<HOST_SHARE><MEM_USAGE>0</MEM_USAGE><CPU_USAGE>0</CPU_USAGE>"
                "<TOTAL_MEM>32780000</TOTAL_MEM><TOTAL_CPU>800</TOTAL_CPU>"
                "<MAX_MEM>32780000</MAX_MEM><MAX_CPU>800</MAX_CPU>"
                f"<RUNNING_VMS>{len(vms)}</RUNNING_VMS><VMS_THREAD>1</VMS_THREAD>"
                "<DATASTORES><DISK_USAGE>0</DISK_USAGE><FREE_DISK>0</FREE_DISK>"
                "<MAX_DISK>0</MAX_DISK><USED_DISK>0</USED_DISK></DATASTORES>"
                "<PCI_DEVICES/><NUMA_NODES/></HOST_SHARE>"
                "<VMS>" + "".join(f"<ID>{v}</ID>" for v in vms) + "</VMS>"
                f"<TEMPLATE>{attrs_xml(template)}</TEMPLATE><MONITORING/></HOST>"
            )

    def _encrypted(self, template: Mapping[str, TemplateValue], paths: Sequence[str],
                   decrypt: bool) -> OrderedDict[str, TemplateValue]:
        out: OrderedDict[str, TemplateValue] = OrderedDict()
        for name, value in template.items():
            if isinstance(value, Mapping):
                inner = OrderedDict(value)
                for path in paths:
                    vec, _, attr = path.partition("/")
                    if vec == name and attr in inner and not decrypt:
                        inner[attr] = self.encrypt(inner[attr])
                out[name] = inner
            else:
                out[name] = value
        return out

    def ar_xml(self, ar: AddressRange, decrypt: bool) -> str:
        attrs: OrderedDict[str, str] = OrderedDict(ar.attrs)
        attrs["AR_ID"] = str(ar.ar_id)
        if "PACKET_TOKEN" in attrs and not decrypt and "AR/PACKET_TOKEN" in VNET_ENCRYPTED_ATTR:
            attrs["PACKET_TOKEN"] = self.encrypt(attrs["PACKET_TOKEN"])
        extra = ""
        if ar.size and "IP" in ar.attrs:
            extra += el("MAC_END", ar.mac_at(ar.size - 1)) + el("IP_END", ar.ip_at(ar.size - 1))
        elif "MAC" in ar.attrs and ar.size:
            extra += el("MAC_END", ar.mac_at(ar.size - 1))
        leases = "".join(
            f"<LEASE>{el('IP', lease.ip)}{el('MAC', lease.mac)}{el(lease.kind, lease.vm_id)}"
            "</LEASE>"
            for _, lease in sorted(ar.leases.items()))
        return (f"<AR>{attrs_xml(attrs)}{extra}<USED_LEASES>{len(ar.leases)}</USED_LEASES>"
                f"<LEASES>{leases}</LEASES></AR>")

    def vnet_xml(self, vnet_id: int, decrypt: bool = False) -> str:
        with self.lock:
            vnet = self.vnet(vnet_id)
            used = sum(len(ar.leases) for ar in vnet.ars)
            return (
                f"<VNET><ID>{vnet.id}</ID>{_OWNER}{el('NAME', vnet.name, raw=True)}"
                f"{_PERMISSIONS}<CLUSTERS><ID>0</ID></CLUSTERS>"
                f"{el('BRIDGE', vnet.bridge)}{el('BRIDGE_TYPE', 'linux')}"
                + (f"<PARENT_NETWORK_ID>{vnet.parent_id}</PARENT_NETWORK_ID>"
                   if vnet.parent_id is not None else "<PARENT_NETWORK_ID/>") +
                f"{el('VN_MAD', vnet.vn_mad)}<PHYDEV/><VLAN_ID/><OUTER_VLAN_ID/>"
                "<VLAN_ID_AUTOMATIC>0</VLAN_ID_AUTOMATIC>"
                "<OUTER_VLAN_ID_AUTOMATIC>0</OUTER_VLAN_ID_AUTOMATIC>"
                f"<USED_LEASES>{used}</USED_LEASES><VROUTERS/>"
                f"<TEMPLATE>{attrs_xml(vnet.template)}</TEMPLATE>"
                "<AR_POOL>" + "".join(self.ar_xml(ar, decrypt) for ar in vnet.ars)
                + "</AR_POOL></VNET>"
            )

    def vm_xml(self, vm_id: int) -> str:
        with self.lock:
            vm = self.vm(vm_id)
            template: OrderedDict[str, TemplateValue] = OrderedDict(vm.template)
            if vm.nics:
                template["NIC"] = list(vm.nics)
            if vm.aliases:
                template["NIC_ALIAS"] = list(vm.aliases)
            history = "".join(
                "<HISTORY>" + "".join(
                    el(k, v) if k in ("VM_MAD", "TM_MAD") else el(k, v, raw=True)
                    for k, v in record.items()) + "</HISTORY>"
                for record in vm.history)
            return (
                f"<VM><ID>{vm.id}</ID>{_OWNER}{el('NAME', vm.name, raw=True)}{_PERMISSIONS}"
                f"<LAST_POLL>0</LAST_POLL><STATE>{vm.state}</STATE>"
                f"<LCM_STATE>{vm.lcm_state}</LCM_STATE><PREV_STATE>{vm.prev_state}</PREV_STATE>"
                f"<PREV_LCM_STATE>{vm.prev_lcm_state}</PREV_LCM_STATE><RESCHED>0</RESCHED>"
                f"<STIME>{vm.stime}</STIME><ETIME>{vm.etime}</ETIME>"
                f"{el('DEPLOY_ID', vm.deploy_id, raw=True)}<MONITORING/>"
                f"<TEMPLATE>{attrs_xml(template)}</TEMPLATE><USER_TEMPLATE/>"
                + (f"<HISTORY_RECORDS>{history}</HISTORY_RECORDS>" if vm.history
                   else "<HISTORY_RECORDS/>")
                + "</VM>"
            )

    def hook_xml(self, hook_id: int, with_log: bool = True) -> str:
        with self.lock:
            hook = self.hook(hook_id)
            body = (f"<HOOK><ID>{hook.id}</ID>{el('NAME', hook.name, raw=True)}"
                    f"{el('TYPE', hook.type, raw=True)}"
                    f"<TEMPLATE>{attrs_xml(hook.template)}</TEMPLATE>")
            if with_log:
                body += "<HOOKLOG>" + "".join(_record_xml(r) for r in hook.log) + "</HOOKLOG>"
            return body + "</HOOK>"

    def pool_xml(self, kind: str) -> str:
        with self.lock:
            if kind == "HOOK":
                items = "".join(self.hook_xml(i, with_log=False) for i in sorted(self.hooks))
            elif kind == "HOST":
                items = "".join(self.host_xml(i) for i in sorted(self.hosts))
            elif kind == "VNET":
                items = "".join(self.vnet_xml(i) for i in sorted(self.vnets))
            elif kind == "VM":
                items = "".join(self.vm_xml(i) for i in sorted(self.vms)
                                if self.vms[i].state != VM_STATES["DONE"])
            else:
                raise ValueError(kind)
            return f"<{kind}_POOL>{items}</{kind}_POOL>"

    # -- persistence --

    def to_dict(self) -> dict:
        with self.lock:
            return {
                "key": self.key.hex(),  # keeps the encrypted forms stable across restarts
                "next": dict(self._next),
                "hosts": [{"id": h.id, "name": h.name, "template": h.template,
                           "cluster_id": h.cluster_id} for h in self.hosts.values()],
                "vnets": [{"id": v.id, "name": v.name, "vn_mad": v.vn_mad, "bridge": v.bridge,
                           "template": v.template, "next_ar_id": v.next_ar_id,
                           "parent_id": v.parent_id,
                           "ars": [{"ar_id": a.ar_id, "attrs": a.attrs,
                                    "leases": {str(i): [le.vm_id, le.ip, le.mac, le.kind]
                                               for i, le in a.leases.items()}}
                                   for a in v.ars]} for v in self.vnets.values()],
                "vms": [{k: getattr(vm, k) for k in (
                    "id", "name", "state", "lcm_state", "prev_state", "prev_lcm_state",
                    "deploy_id", "stime", "etime", "nics", "aliases", "template", "history")}
                    for vm in self.vms.values()],
                "hooks": [{"id": h.id, "name": h.name, "type": h.type, "template": h.template,
                           "next_execution_id": h.next_execution_id,
                           "log": [r.__dict__ for r in h.log]} for h in self.hooks.values()],
            }

    def load(self, path: str) -> None:
        """Load objects saved by a previous run (``--state-file``)."""
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle, object_pairs_hook=OrderedDict)
        with self.lock:
            self.reset()
            if data.get("key"):
                self.key = bytes.fromhex(data["key"])
            self._next.update(data.get("next", {}))
            for h in data.get("hosts", []):
                self.hosts[h["id"]] = Host(h["id"], h["name"], h["template"], h["cluster_id"])
            for v in data.get("vnets", []):
                vnet = VNet(v["id"], v["name"], v["vn_mad"], v["bridge"], v["template"],
                            next_ar_id=v["next_ar_id"], parent_id=v.get("parent_id"))
                for a in v["ars"]:
                    vnet.ars.append(AddressRange(a["ar_id"], a["attrs"], {
                        int(i): Lease(*le) for i, le in a["leases"].items()}))
                self.vnets[vnet.id] = vnet
            for m in data.get("vms", []):
                self.vms[m["id"]] = VM(**m)
            for h in data.get("hooks", []):
                hook = Hook(h["id"], h["name"], h["type"], h["template"],
                            next_execution_id=h["next_execution_id"])
                hook.log = [ExecutionRecord(**r) for r in h["log"]]
                self.hooks[hook.id] = hook

    def save(self) -> None:
        """Write the state file (atomically), when there is one."""
        if not self.state_file:
            return
        with self.lock:
            # it holds tokens (AR PACKET_TOKEN) in clear: owner only
            write_state_file(self.state_file, json.dumps(self.to_dict(), indent=1))

    def _changed(self) -> None:
        if self.state_file:
            self.save()

    def changed(self) -> None:
        """Tell the state that an object was modified in place (saves the state file)."""
        with self.lock:
            self._changed()


def check_ar(attrs: Mapping[str, str]) -> None:
    """oned's checks on a new IP4 address range."""
    ar_type = attrs.get("TYPE", "").upper()
    if ar_type not in ("IP4", "ETHER", "IP6", "IP4_6", "IP6_STATIC", "IP4_6_STATIC"):
        raise OnedError(OnedError.INTERNAL, f"Unknown or missing TYPE for Address Range: "
                                            f"{ar_type[:20]!r}")
    try:
        size = int(attrs.get("SIZE", ""))
    except ValueError:
        size = 0
    if size <= 0:
        raise OnedError(OnedError.INTERNAL, "Wrong SIZE for address range")
    if ar_type.startswith("IP4"):
        try:
            ipaddress.IPv4Address(attrs.get("IP", ""))
        except ValueError:
            raise OnedError(OnedError.INTERNAL, "Wrong or empty IP attribute") from None


def _record_xml(record: ExecutionRecord) -> str:
    """A hook execution record as oned keeps it: STDOUT and STDERR base64 encoded."""
    b64 = base64.b64encode
    return (
        f"<HOOK_EXECUTION_RECORD><HOOK_ID>{record.hook_id}</HOOK_ID>"
        f"<EXECUTION_ID>{record.execution_id}</EXECUTION_ID>"
        f"<TIMESTAMP>{record.timestamp}</TIMESTAMP>{el('ARGUMENTS', record.arguments)}"
        f"<EXECUTION_RESULT>{el('COMMAND', record.command)}"
        f"{el('STDOUT', b64(record.stdout.encode('utf-8', 'replace')).decode())}"
        f"{el('STDERR', b64(record.stderr.encode('utf-8', 'replace')).decode())}"
        f"<CODE>{record.code}</CODE></EXECUTION_RESULT>"
        f"{el('REMOTE_HOST', record.remote_host)}"
        f"<RETRY>{'yes' if record.retry else 'no'}</RETRY></HOOK_EXECUTION_RECORD>"
    )
