"""verl's synchronous replay buffer, polled every 0.1 s instead of every 2 s.

verl 0.9.1's V1 trainer waits for a step's rollouts by asking TransferQueue whether
enough trajectories are finished, and sleeps ``ReplayBuffer.poll_interval`` (2 s, not
a setting) between asks: every generation phase, training or validation, is rounded up
to the next multiple of 2 s. A step of a small model generates in a few seconds, so that
is up to half of its generation time. This is verl's own buffer with a shorter sleep,
plugged in through verl's custom sampler setting (the GRPO recipe's config/grpo.yaml):

    trainer.v1.sampler.custom_sampler.path=pkg://afm_trainer.verl_ext.replay_buffer
    trainer.v1.sampler.custom_sampler.name=FastPollReplayBuffer
    trainer.v1.sampler.sampler_kwargs.poll_interval_s=0.1

verl hands a custom sampler fewer arguments than its own (none of DAPO's group
filtering), and this one is the synchronous buffer only: with DAPO or an asynchronous
trainer mode it stops with a message saying to set ``custom_sampler.path=null``.
"""

from __future__ import annotations

from verl.trainer.ppo.v1.replay_buffer import ReplayBuffer

DEFAULT_POLL_INTERVAL_S = 0.1


class FastPollReplayBuffer(ReplayBuffer):
    """verl's ``ReplayBuffer`` (sync mode) with ``sampler_kwargs.poll_interval_s``."""

    def __init__(self, trainer_mode, trainer_config, max_off_policy_threshold, max_off_policy_strategy, sampler_kwargs,
                 refill_fn=None):  # fmt: skip
        settings = dict(sampler_kwargs or {})
        if trainer_mode != "sync" or settings.get("filter_groups_enabled"):
            raise ValueError(
                "FastPollReplayBuffer stands in for verl's synchronous sampler, without DAPO's group filter "
                f"(trainer mode {trainer_mode!r}, filter_groups enabled: {bool(settings.get('filter_groups_enabled'))}): "
                "set trainer.v1.sampler.custom_sampler.path=null for verl's own"
            )
        super().__init__(
            trainer_mode,
            trainer_config,
            max_off_policy_threshold,
            max_off_policy_strategy,
            sampler_kwargs,
            poll_interval=float(settings.get("poll_interval_s", DEFAULT_POLL_INTERVAL_S)),
            refill_fn=refill_fn,
        )
