"""HTTP service (install the ``server`` extra: ``pip install 'counterclip[server]'``)."""
