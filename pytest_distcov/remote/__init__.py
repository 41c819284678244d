"""Workers on other hosts over ssh: the fleet of gateways, what is shipped, what runs there.

:mod:`.agent` and :mod:`.launch` run on hosts that have nothing but a Python: they import the
standard library only, nothing of this package (a test holds this). :mod:`.fleet` runs in the
controller and may import execnet, xdist's public API, the settings and the bottom layers.
"""
