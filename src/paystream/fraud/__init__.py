"""The fraud service: rules screening every payment, and the human review queue."""
