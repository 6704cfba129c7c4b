"""IEC 61850-90-8: DSO limits (DESE.ChaPwrLim) and FSCH/FSCC schedules in, EV state out.

``config`` (IEDs and object references), ``values`` (pure decoding and validation into
``GridConstraint``) and ``client`` (the MMS connection on the ``iec61850`` package).
``substation`` is a demo IED on the ``iec61850`` package's server (no GPL) with an async
handle; ``peer_process`` runs an IED script in a subprocess that speaks JSON lines.
"""
