"""State-store test helpers: a store and FSM fed commands the way Raft feeds them."""

from __future__ import annotations

from proconsul.state import commands as cmd
from proconsul.state.fsm import FSM
from proconsul.state.store import Store


class Log:
    """Applies commands at increasing indexes through their wire encoding, as Raft would."""

    def __init__(self) -> None:
        self.store = Store()
        self.fsm = FSM(self.store)
        self.index = 0

    def apply(self, command: cmd.Command) -> object:
        self.index += 1
        return self.fsm.apply(self.index, cmd.decode(cmd.encode(command)))
