"""Consul's ACL system, protocol-free (sans-I/O): the rules language, the authorizer and the
replicated records (tokens, policies, roles).

Nothing here does I/O or knows about HTTP, Raft or the store: `rules` parses policy text into
rules, `authorizer` answers "may this token do that", `records` holds the token/policy/role
records as they are replicated and rendered in Consul's JSON shapes.
"""
