"""What the frontend and the hypervisors share: errors, validation, oned's XML and template
syntax, the VM model, the error-block CLI wrapper, logging and locks.

Standard library only, Python >= 3.8: ``onehost sync`` copies this folder to every host,
and CI checks it whole with vermin.
"""
