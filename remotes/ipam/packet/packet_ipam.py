#!/usr/bin/env python3
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.realpath(__file__)), "..", "..", "lib"))
from packet_provider.ipam.main import main  # noqa: E402

main(os.path.basename(sys.argv[0]), sys.argv[1:])
