"""Replay of episodes for recurrent value-factorization training."""

from resq_torchrl.data.episodes import DEFAULT_EXCLUDE, EpisodeReplayBuffer

__all__ = ["EpisodeReplayBuffer", "DEFAULT_EXCLUDE"]
