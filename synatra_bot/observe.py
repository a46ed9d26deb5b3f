"""What the bot tells a host's monitoring as it works: one small interface every layer is
handed (never looks up), so that the storage, engine, roleplay and Discord layers report
events without knowing where they go. `Observer` itself ignores everything: it is what runs
when the host asked for no metrics (`synatra_bot.metrics` records them for Prometheus)."""

from __future__ import annotations


class Observer:
    """The events a host can watch. Every method is called where the event happens, on
    whichever thread that is, and must return at once."""

    def reply_ended(self, outcome: str) -> None:
        """A player's reply turn ended: finished, cancelled, timed_out or failed."""

    def first_token(self, seconds: float) -> None:
        """A reply's first text arrived `seconds` after its request went to the engine."""

    def token_gap(self, seconds: float) -> None:
        """Seconds between two pieces of one reply's streamed text."""

    def tokens_generated(self, count: int) -> None:
        """The engine wrote `count` tokens (counted by the model's tokenizer)."""

    def queue_changed(self, waiting: int) -> None:
        """`waiting` player turns now wait for admission."""

    def queue_waited(self, seconds: float) -> None:
        """A turn was admitted after waiting `seconds` in the queue."""

    def engine_error(self, kind: str) -> None:
        """A reply failed on the engine's side; `kind` names the error class."""

    def engine_restarted(self) -> None:
        """The embedded engine rebuilt its generation loop after a failure."""

    def discord_response(self, status: int) -> None:
        """Discord's REST API answered a request with HTTP `status`."""

    def discord_unreachable(self) -> None:
        """A REST request to Discord got no answer (connection refused, reset, timed out)."""

    def database_statement(self, seconds: float) -> None:
        """One SQL statement took `seconds`."""

    def database_error(self, kind: str) -> None:
        """The database failed a statement; `kind` names the driver's error class."""


#: The observer of a bot whose host asked for no metrics. It holds no state.
IGNORED = Observer()
