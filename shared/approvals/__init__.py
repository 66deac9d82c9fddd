"""Governed changes that ask for approval: path rules (`rules`), the approval record and its decisions
(`store`), and the notification webhook (`webhook`)."""
