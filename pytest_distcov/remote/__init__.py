"""Workers on other hosts over ssh: the fleet of gateways, what is shipped, what runs there.

:mod:`.agent` and :mod:`.launch` run on hosts that have nothing but a Python: they import the
standard library only, nothing of this package (a test holds this). :mod:`.fleet` runs in the
controller and may import execnet, xdist's public API, the settings and the bottom layers;
what it needs of xdist's and execnet's internals goes through :mod:`.xdist_door`, the only
module here that may touch them (:mod:`.launch` names its own knowledge of xdist's first
message in one place).
"""
