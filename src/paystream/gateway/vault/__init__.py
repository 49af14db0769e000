"""Cards at the edge: number rules (`numbers`), the sealed card store and KEK rotation
(`store`), and the ``POST /v1/cards`` write (`cards`)."""
