"""IEEE 2030.5 / CSIP-AUS aggregator client: safe XML intake, device identity, DER event engine.

- ``xml``: bodies in (size cap, no DTDs, Content-Type, ``<Error>`` roots, CSIP-AUS namespace
  variants) and envoy-schema models out; models back to bytes for POST/PUT.
- ``identity``: LFDI and SFDI of a certificate.
- ``controls``: the §10.2.3 event rules for one site (pure: server time is a parameter),
  the Responses owed, and the translation into ``GridConstraint`` objects.
- ``client``: the aggregator client (discovery, registration, polling, metering).
- ``loopback``: a loopback utility server (the DSO peer of the tests and of ``gridflex demo``)
  serving the recorded envoy walks in ``recorded/``, with a clock and a small DSO API.
"""
