"""The subscriber store: people, lists, memberships with consent, events, signed reader links."""
