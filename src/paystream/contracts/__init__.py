"""What services share: the event envelope, every event, the bus topology and the API schemas.

Pure data, versioned. Imports no service and nothing from `platform` but money and ids.
"""
