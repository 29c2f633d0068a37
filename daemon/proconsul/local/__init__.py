"""This agent's own state: services and checks, anti-entropy, check runners, user events, watches, coordinate sync."""
