"""StreamingVLM: live commentary on an endless video feed, one round per second, on the shared
cache, with decode batched across streams.

Each second ``k`` of the feed (2 frames at 2 fps) becomes one chat round, as StreamingVLM
formats it::

    first second:  <|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n
                   <|im_start|>previous text\\n{previous text}<|im_end|>\\n
                   <|im_start|>user\\nTime=0.0-1.0s<|vision_start|>{video}<|vision_end|>
                   {instruction}<|im_end|>\\n<|im_start|>assistant\\n
    later seconds: [<|im_end|> of the last reply]\\n<|im_start|>user\\nTime=k.0-k+1.0s
                   <|vision_start|>{video}<|vision_end|>{question?}<|im_end|>\\n
                   <|im_start|>assistant\\n

then up to 20 tokens of reply, ending at ``<|im_end|>``; the reply's text minus the trailing
" ..." is the caption of ``[k, k + 1)`` (empty for a silent second). A question asked
mid-stream joins the next round's user turn. The cache keeps what the published bookkeeping
keeps (:mod:`stream.kvcache.vlm_window`: system sink, previous text 512 + 511, the last 16
rounds of text, a 16-second vision window) with contiguous M-RoPE positions, re-based on the
host; nothing is ever re-rotated. Replies are greedy, or sampled per session as published
(:mod:`stream.pipelines.sampling`: temperature 0.9, repetition penalty 1.05, top-k 50, seeded).

A round runs as :meth:`StreamingVLMPipeline.prefill` followed by
:meth:`StreamingVLMPipeline.decode` steps. Both take any number of streams and pack them::

    prefill([a, b, c]):  host, per stream: feed second -> pixels, round text -> ids, cache ranges
                         device, per forward of <= max_prefill_tokens tokens:
                           embed(ids_a ids_b ids_c, pixels_a|b|c, grids [3, 3])  a vision call
                                                              (one per frame size among them)
                           decoder(embeds, one CacheView over 3 sequences)       one forward
                           the sampler over each sequence's last row             3 next tokens
    decode([a, b, c]):   one token each, one packed forward

A stream's results are those of its prefill alone (same next token, same cache K/V); a stream
whose host preparation fails is left out of the forward and reported, the others go on.
"""

from __future__ import annotations

import collections
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from framestream.models.qwen_vl import MAX_ASPECT_RATIO, QwenVL, VideoInputs
from framestream.stream.kvcache import (
    CacheFullError,
    CacheGeometry,
    CacheStep,
    CacheView,
    KVCacheDtype,
    KVCacheManager,
    TokenRange,
    build_step,
    cache_dtype,
    check_kv_cache_dtype,
)
from framestream.stream.kvcache.vlm_window import (
    RoundTokens,
    StreamingVLMConfig,
    StreamingVLMWindow,
)
from framestream.stream.pipelines.decode_graph import DecodeGraphs, graph_safe_backend
from framestream.stream.pipelines.feed import FeedChunk, FrameFeed
from framestream.stream.pipelines.sampling import (
    GREEDY,
    SamplerBatch,
    SampleSlot,
    SamplingParams,
    TokenPresence,
    sample,
)
from framestream.stream.requests import DEFAULT_INSTRUCTION, UnderstandingRequest
from framestream.stream.scheduler import StepCost

__all__ = [
    "Caption",
    "StreamingVLMPipeline",
    "StreamingVLMState",
    "UnderstandingConfig",
]

SYSTEM_PROMPT = "You are a helpful assistant."


@dataclass(frozen=True)
class UnderstandingConfig:
    """StreamingVLM's published inference settings; every field can be overridden."""

    fps: int = 2  # sampled frames per second of video (2: one temporal grid per second)
    max_new_tokens: int = 20  # per second
    max_pixels: int | None = None  # per frame; the model's (768 * 28 * 28) when None
    text_rounds: int = 16
    vision_seconds: int = 16
    prev_sink_tokens: int = 512
    prev_window_tokens: int = 512
    max_round_text_tokens: int = 160  # template + question + reply, for admission
    max_buffered_seconds: int = 4  # feed seconds waiting; older ones are skipped
    # tokens (text + vision, every stream's) one packed prefill forward holds at most: a longer
    # list of streams is split into several forwards, and the engine takes at most this many
    # per turn (by prefill_tokens()). 16384: 18 streams of 1008x560 (720 vision tokens each).
    max_prefill_tokens: int = 16384
    attention_backend: str | None = None
    # pool rows: "auto" (the model's dtype) or "fp8_e4m3" (half of bf16's bytes, unscaled;
    # its quality is measured on the generation pipelines only: stream.kvcache.pool)
    kv_cache_dtype: KVCacheDtype = "auto"
    # decode steps through static buffers captured as CUDA graphs (stream.pipelines.decode_graph),
    # where the attention backend allows it; batches over max_graph_batch streams run eagerly
    decode_graphs: bool = True
    max_graph_batch: int = 32
    # a session's sampler unless it asks otherwise: greedy here (the embedded toy model's
    # quality floors are greedy's); the service gives a checkpoint folder the published one
    # (stream.pipelines.sampling.published_sampling)
    sampling: SamplingParams = GREEDY
    # frame sizes (width, height) whose whole round warm_up() runs once at load time, so that
    # the first real second of that vision grid finds the tower's kernels compiled and its
    # memory held: 720p, which Qwen's resize takes to the 16:9 grid at max_pixels (1008x560,
    # as 1080p and 1008x560 themselves)
    warm_frames: tuple[tuple[int, int], ...] = ((1280, 720),)

    def __post_init__(self) -> None:
        check_kv_cache_dtype(self.kv_cache_dtype)
        if self.fps not in (2, 4):
            raise ValueError(
                f"fps must be 2 or 4 (whole temporal grids per second), got {self.fps}"
            )
        if self.max_prefill_tokens <= 0:
            raise ValueError(f"max_prefill_tokens must be positive, got {self.max_prefill_tokens}")
        if self.max_graph_batch <= 0:
            raise ValueError(f"max_graph_batch must be positive, got {self.max_graph_batch}")


@dataclass(frozen=True, slots=True)
class Caption:
    start: float  # seconds of the feed
    end: float
    text: str  # "" for a silent second
    lag: float = 0.0  # seconds the understanding trails the newest frame, when it was made


@dataclass(eq=False)
class StreamingVLMState:
    """Everything one stream owns."""

    cache: StreamingVLMWindow
    feed: FrameFeed
    instruction: str
    sampling: SamplingParams
    presence_row: int  # the stream's row of the pipeline's TokenPresence
    questions: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=8))
    pending: list[int] = field(default_factory=list)  # the last reply's tail, not cached yet
    rounds: int = 0
    second: int = -1  # the feed second being answered
    reply: list[int] = field(default_factory=list)  # tokens generated this round
    next_token: int | None = None  # generated, not yet in the cache
    draws: int = 0  # tokens sampled so far: the sampler's noise counter
    decoding: bool = False
    frame_size: tuple[int, int] | None = None  # (width, height) of the stream's first frame
    vision_tokens: int = 0  # merged vision tokens of one second (0 until its first round)


@dataclass(slots=True)
class _Round:
    """One stream's round, prepared on the host for a packed prefill forward."""

    index: int  # the stream's place in the prefill call's list
    second: int  # the feed second it answers
    ids: list[int]  # token ids, its <|video_pad|> run included (the last reply's end first)
    ranges: list[TokenRange]  # cache ranges the ids are written to, in order
    video: VideoInputs  # the second's pixels for the vision tower


class StreamingVLMPipeline:
    """Runs StreamingVLM streams on one Qwen2.5-VL and a shared cache pool.

    Args:
        model: the loaded Qwen2.5-VL.
        manager: the device's cache manager; a pool for the decoder's geometry is added.
        cache_bytes: capacity of that pool when created here.
        config: StreamingVLM settings.
        block_size: tokens per block of that pool.
    """

    kind = "understanding"
    # a second's round on this device: (alone, each more in one batch) seconds; set by calibrate()
    calibration: tuple[float, float] | None = None

    def __init__(
        self,
        model: QwenVL,
        manager: KVCacheManager,
        cache_bytes: int = 2 << 30,
        config: UnderstandingConfig | None = None,
        block_size: int = 16,
    ) -> None:
        self.model = model
        self.config = config or UnderstandingConfig()
        self.manager = manager
        args = model.args
        dtype = cache_dtype(self.config.kv_cache_dtype, model.dtype)
        self.geometry = CacheGeometry(
            args.num_layers, args.num_kv_heads, args.head_dim, dtype, str(model.device)
        )
        try:
            self.pool = manager.pool(self.geometry)
        except ValueError:
            self.pool = manager.add_pool(self.geometry, block_size, cache_bytes)
        merge = model.merge_size * model.patch_size
        max_pixels = self.config.max_pixels or model.video_max_pixels
        grids_per_second = self.config.fps // model.temporal_patch_size
        # the published fold leaves out the reply's last len(" ...<|im_end|>") - 1 tokens
        fold_drop = len(self._tokens(" ...<|im_end|>")) - 1
        self._policy = StreamingVLMConfig(
            text_rounds=self.config.text_rounds,
            vision_seconds=self.config.vision_seconds,
            prev_sink_tokens=self.config.prev_sink_tokens,
            prev_window_tokens=self.config.prev_window_tokens,
            fold_drop_tokens=fold_drop,
            max_prefix_tokens=64,
            max_round_text_tokens=self.config.max_round_text_tokens,
            max_vision_tokens=grids_per_second * max_pixels // (merge * merge),
        )
        # temporal position step between grids: tokens_per_second x seconds per grid
        tokens_per_second = getattr(model.config.vision_config, "tokens_per_second", 2)
        self._t_step = round(tokens_per_second * model.temporal_patch_size / self.config.fps)
        sp = model.special
        self._stop = sp.im_end
        # structural tokens a reply must never contain (a stray <|video_pad|> would also be
        # taken for a vision slot when the reply is prefilled again)
        banned = [sp.video_pad, sp.image_pad, sp.vision_start, sp.vision_end, sp.im_start]
        self._banned = torch.tensor(banned + [sp.endoftext], device=model.device)
        # the repetition penalty's token sets, a row per stream: as many as the pool admits
        streams = self.pool.num_blocks // self._policy.worst_case_blocks(self.pool.block_size)
        self._presence = TokenPresence(max(streams, 1), args.vocab_size, model.device)
        self._graphs = self._decode_graphs()
        # vision grids the tower has run, and how many prefills met one it had not: a new
        # grid is a new shape for every kernel of the tower and a new size to allocate
        self._vision_grids: set[tuple[int, int, int]] = set()
        self.cold_vision_grids = 0

    def _decode_graphs(self) -> DecodeGraphs | None:
        """The decode step's graphs, where the config and the attention backend allow them."""
        cfg = self.config
        if not (cfg.decode_graphs and graph_safe_backend(cfg.attention_backend, self.model.device)):
            return None
        block = self.pool.block_size
        return DecodeGraphs(
            self._decode_step,
            self.pool,
            self._cache_view,
            kv_per_sequence=self._policy.worst_case_blocks(block) * block,
            max_batch=cfg.max_graph_batch,
            capture=self.model.device.type == "cuda",
        )

    def warm_up(self) -> None:
        """Pay the first uses at load time: capture the decode step's graphs for every batch
        size (CUDA), then run one second of a throwaway stream at each of
        ``config.warm_frames`` (its prompt prefill, frame preparation, vision tower, round
        prefill and reply), so that the first real second at one of those vision grids
        finds the kernels compiled and the tower run at its shapes (:attr:`cold_vision_grids`
        counts the prefills that met a grid not run before). A pool too small for a stream
        warms nothing more (admission refuses such streams anyway)."""
        if self._graphs is not None:
            self._graphs.capture_all()
        for width, height in self.config.warm_frames:
            try:
                state = self.open(UnderstandingRequest())
            except CacheFullError:
                return
            try:
                frame = np.full((height, width, 3), 128, dtype=np.uint8)
                for j in range(self.config.fps + 1):
                    self.push_frame(state, j / self.config.fps, frame)
                self.prefill(state)
                while state.decoding:
                    self.decode([state])
            finally:
                self.close(state)

    # -- what a second costs ---------------------------------------------------------------

    def calibrate(self) -> None:
        """Time a second's round on this device, one stream alone and two in one batch, with
        frames at the model's largest input and replies of ``max_new_tokens`` (the worst a
        second of feed asks), for :meth:`step_cost`. A pool that holds one stream only has no
        batch to time: each stream is then counted at the whole round."""
        alone = self._round_seconds(1)
        try:
            paired = self._round_seconds(2)
        except CacheFullError:
            paired = 2 * alone
        self.calibration = (alone, max(paired - alone, 0.0))

    def step_cost(self, request: UnderstandingRequest) -> StepCost | None:
        """A second of feed on this device: the calibrated round alone, and its share in a
        batch with others; None before :meth:`calibrate`."""
        if self.calibration is None:
            return None
        alone, each = self.calibration
        return StepCost(alone, 1.0, batched_seconds=each)

    def _round_seconds(self, streams: int) -> float:
        """A round of ``streams`` streams: its prefill plus ``max_new_tokens`` decode steps."""
        side = int(math.sqrt(self.config.max_pixels or self.model.video_max_pixels))
        frame = np.full((side, side, 3), 128, dtype=np.uint8)
        states = []
        try:
            for _ in range(streams):
                states.append(self.open(UnderstandingRequest()))
            timings = []
            for second in range(3):  # the first pays the kernels' compilation; fastest counts
                for state in states:
                    for j in range(self.config.fps + 1):
                        self.push_frame(state, second + j / self.config.fps, frame)
                start = time.perf_counter()
                self.prefill(states)
                _synchronize(self.model.device)
                prefilled = time.perf_counter()
                for state in states:  # time a forward even where the model would stop at once
                    if state.next_token == self._stop:
                        state.next_token = 0
                self.decode(states)
                _synchronize(self.model.device)
                step = time.perf_counter() - prefilled
                timings.append(prefilled - start + step * self.config.max_new_tokens)
                while any(state.decoding for state in states):
                    self.decode([s for s in states if s.decoding])
            return min(timings[1:])
        finally:
            for state in states:
                self.close(state)

    # -- session lifecycle -----------------------------------------------------------------

    def open(self, request: UnderstandingRequest) -> StreamingVLMState:
        """Admit a stream and prefill its prefix (system prompt and previous text).

        Raises:
            ValueError: a sampler field out of range (named in the message).
            CacheFullError: the pool cannot take the stream's worst case.
        """
        sampling = self.sampling_for(request)
        cache = self.manager.open(self.geometry, self._policy)
        row = self._presence.acquire()
        if row is None:
            cache.cache.close()
            raise CacheFullError(needed_bytes=self._presence.table.shape[1], available_bytes=0)
        try:
            state = StreamingVLMState(
                cache,
                FrameFeed(self.config.fps, self.config.max_buffered_seconds),
                request.instruction.strip() or DEFAULT_INSTRUCTION,
                sampling,
                row,
            )
            self._prefill_prefix(state, request.previous_text)
            return state
        except BaseException:
            cache.cache.close()
            self._presence.release(row)
            raise

    def sampling_for(self, request: UnderstandingRequest) -> SamplingParams:
        """The request's sampler: the pipeline's default with the fields the request sets."""
        names = ("temperature", "repetition_penalty", "top_k", "seed")
        asked = {n: getattr(request, n) for n in names if getattr(request, n) is not None}
        return replace(self.config.sampling, **asked)

    def close(self, state: StreamingVLMState) -> None:
        state.cache.cache.close()
        self._presence.release(state.presence_row)

    def push_frame(self, state: StreamingVLMState, timestamp: float, frame: np.ndarray) -> None:
        """Feed one uint8 ``[H, W, 3]`` frame.

        Raises:
            ValueError: a frame of another size than the stream's first (the vision tower takes
                a second's frames together), or longer than ``MAX_ASPECT_RATIO`` to one side;
                :class:`TimestampsBackwardsError` (a ValueError) when older than the last one.
        """
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8 or 0 in frame.shape:
            raise ValueError(f"frames must be uint8 [H, W, 3], got {frame.dtype} {frame.shape}")
        height, width = frame.shape[:2]
        if max(height, width) > MAX_ASPECT_RATIO * min(height, width):
            raise ValueError(f"a {width}x{height} frame is over {MAX_ASPECT_RATIO}:1")
        if state.frame_size is None:
            state.frame_size = (width, height)
        elif state.frame_size != (width, height):
            first = "x".join(map(str, state.frame_size))
            raise ValueError(f"a {width}x{height} frame in a stream of {first} frames")
        state.feed.push(timestamp, frame)

    def ask(self, state: StreamingVLMState, question: str) -> None:
        """Ask about the video; answered in the next round."""
        state.questions.append(question.strip())

    def is_decoding(self, state: StreamingVLMState) -> bool:
        """Whether the stream is in the middle of a reply (it takes part in decode steps)."""
        return state.decoding

    def ready(self, state: StreamingVLMState) -> bool:
        """Whether a prefill can run now (a full second is buffered and no reply is pending)."""
        return not state.decoding and state.feed.ready()

    # -- one round -------------------------------------------------------------------------

    def prefill_tokens(self, state: StreamingVLMState) -> int:
        """The most tokens the stream's next round puts into a prefill forward (host only).

        Its last reply's end, the round-text budget (``max_round_text_tokens``) and one second's
        vision tokens (the policy's worst case until its first round has measured them); the
        engine packs streams by it under ``max_prefill_tokens``.
        """
        vision = state.vision_tokens or self._policy.max_vision_tokens
        return len(state.pending) + self.config.max_round_text_tokens + vision

    @torch.inference_mode()
    def prefill(
        self, states: StreamingVLMState | Sequence[StreamingVLMState]
    ) -> list[Exception | None]:
        """Start the round of each stream's next buffered second, all in packed forwards.

        Each stream's round is prepared on the host (its second's pixels, the round's text, its
        cache ranges); the rounds then run in order, as many per forward as
        ``max_prefill_tokens`` holds (a round over it alone): one vision-tower call for their
        videos and one decoder forward, as :meth:`decode` packs streams. Every stream ends up
        as after a prefill of its own, mid-reply.

        Args:
            states: streams that are each :meth:`ready`, or one stream.

        Returns:
            Per stream, None when its round started, else the exception that stopped it (its
            second is spent and its cache half-written: close it); the others are not affected
            by it, except those in a forward that raised, which all get its exception. Called
            with one stream (not a list), its exception is raised instead.

        Raises:
            ValueError: a stream that is not ready or is listed twice (then nothing has run).
        """
        single = isinstance(states, StreamingVLMState)
        batch = [states] if single else list(states)
        if len({id(s) for s in batch}) != len(batch):
            raise ValueError("a stream is listed twice in one prefill")
        if not all(self.ready(s) for s in batch):
            raise ValueError("a stream has no complete second buffered; check ready() first")
        errors: list[Exception | None] = [None] * len(batch)
        rounds: list[_Round] = []
        for i, state in enumerate(batch):
            try:
                rounds.append(self._prepare_round(i, state))
            except Exception as exc:
                errors[i] = exc
        for forward in self._pack(rounds):
            try:
                tokens = self._prefill_forward([batch[r.index] for r in forward], forward)
            except Exception as exc:
                for r in forward:
                    errors[r.index] = exc
                continue
            for r, token in zip(forward, tokens, strict=True):
                state = batch[r.index]
                state.next_token, state.reply, state.second = token, [], r.second
                state.decoding, state.pending = True, []
                state.vision_tokens = math.prod(r.video.merged_grid)
                state.rounds += 1
        if single and errors[0] is not None:
            raise errors[0]
        return errors

    def _prepare_round(self, index: int, state: StreamingVLMState) -> _Round:
        """Host work of one stream's round: its second's pixels, ids and cache ranges."""
        chunk: FeedChunk | None = state.feed.take()
        if chunk is None:
            raise ValueError("no complete second buffered; check ready() first")
        video = self.model.video_inputs(chunk.frames, max_pixels=self.config.max_pixels)
        t, h, w = video.merged_grid
        sp = self.model.special
        extra = state.instruction if state.rounds == 0 else " ".join(state.questions)
        state.questions.clear()
        tokens = RoundTokens(
            newline=self._tokens("\n"),
            user=self._tokens("<|im_start|>user\n"),
            time=self._tokens(f"Time={chunk.second:.1f}-{chunk.second + 1:.1f}s"),
            vision=[sp.vision_start, *[sp.video_pad] * (t * h * w), sp.vision_end],
            query=self._tokens(f"{extra}<|im_end|>\n"),
            prompt=self._tokens("<|im_start|>assistant\n"),
            grid=(t, h, w),
        )
        # the last reply's end joins this prefill, as StreamingVLM does; the policy evicts,
        # then lays the round out, and says which tokens it writes
        ranges = state.cache.begin_round(tokens, close=state.pending, t_step=self._t_step)
        return _Round(index, chunk.second, state.cache.token_ids(ranges), ranges, video)

    def _pack(self, rounds: list[_Round]) -> list[list[_Round]]:
        """Consecutive rounds grouped into forwards of at most ``max_prefill_tokens`` tokens."""
        forwards: list[list[_Round]] = []
        tokens = 0
        for r in rounds:
            if not forwards or tokens + len(r.ids) > self.config.max_prefill_tokens:
                forwards.append([])
                tokens = 0
            forwards[-1].append(r)
            tokens += len(r.ids)
        return forwards

    def _prefill_forward(self, states: list[StreamingVLMState], rounds: list[_Round]) -> list[int]:
        """The vision tower and one decoder forward over ``rounds``; their next tokens, each
        penalized over what its stream's cache now holds (the published ``input_ids``)."""
        model = self.model
        hidden = model.decoder(self._embed(rounds), self._view(states, [r.ranges for r in rounds]))
        last = np.cumsum([len(r.ids) for r in rounds]) - 1  # each sequence's last token
        for state in states:
            self._presence.reset(state.presence_row, state.cache.retained()[0])
        logits = model.decoder.logits(hidden[torch.from_numpy(last).to(model.device)])
        slots = self._slots(states)
        batch = SamplerBatch.build(slots, model.device)
        draw = not all(slot.params.greedy for slot in slots)
        return self._sample(logits, batch, draw=draw).tolist()

    def _embed(self, rounds: list[_Round]) -> torch.Tensor:
        """``[sum of ids, hidden]`` embeddings of the rounds, in order: one ``embed`` call (one
        vision-tower call) per video grid among them, as the tower pads a call's videos to its
        largest frame."""
        model = self.model
        by_grid: dict[tuple[int, int, int], list[int]] = {}
        for i, r in enumerate(rounds):
            by_grid.setdefault(r.video.merged_grid, []).append(i)
        self.cold_vision_grids += len(by_grid.keys() - self._vision_grids)
        self._vision_grids.update(by_grid)
        parts: list[torch.Tensor | None] = [None] * len(rounds)
        for members in by_grid.values():
            group = [rounds[i] for i in members]
            embeds = model.embed(
                torch.tensor([t for r in group for t in r.ids], device=model.device),
                torch.cat([r.video.pixel_values_videos for r in group]),
                torch.cat([r.video.video_grid_thw for r in group]),
            )
            for i, part in zip(members, embeds.split([len(r.ids) for r in group]), strict=True):
                parts[i] = part
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    @torch.inference_mode()
    def decode(self, states: list[StreamingVLMState]) -> list[Caption | None]:
        """One token for each decoding stream, in one packed forward.

        Returns, per stream, the caption of its second when its reply just ended, else None.
        """
        model = self.model
        finished: list[Caption | None] = [None] * len(states)
        active = []
        for i, state in enumerate(states):
            if self._accept(state):
                finished[i] = self._caption(state)
            else:
                active.append(i)
        if active:
            live = [states[i] for i in active]
            ids = [s.next_token for s in live]
            plans = [
                s.cache.cache.plan([s.cache.append_reply([token])])
                for s, token in zip(live, ids, strict=True)
            ]
            slots = self._slots(live)
            if self._graphs is not None and self._graphs.fits(plans):
                tokens = self._graphs.step(ids, plans, slots)
            else:
                step = build_step(plans, causal=True, device=model.device)
                ids_device = torch.tensor(ids, device=model.device)
                batch = SamplerBatch.build(slots, model.device)
                draw = not all(slot.params.greedy for slot in slots)
                view = self._cache_view(step)
                tokens = self._decode_step(ids_device, view, batch, draw=draw).tolist()
            for state, token in zip(live, tokens, strict=True):
                state.reply.append(state.next_token)
                state.next_token = token
        return finished

    def _accept(self, state: StreamingVLMState) -> bool:
        """True when the round is over: the model said <|im_end|> or used its token budget
        (then, as StreamingVLM does, the reply is closed with an <|im_end|> of our own)."""
        if not state.decoding:
            raise ValueError("decode() called on a stream that is not decoding")
        if state.next_token == self._stop:
            state.pending = [self._stop]
        elif len(state.reply) + 1 >= self.config.max_new_tokens:
            state.reply.append(state.next_token)
            state.pending = [state.next_token, self._stop]
        else:
            return False
        state.decoding, state.next_token = False, None
        return True

    def _caption(self, state: StreamingVLMState) -> Caption:
        text = self.model.tokenizer.decode(state.reply, skip_special_tokens=True)
        text = text.strip()
        if text.endswith("..."):  # the end-of-chunk marker StreamingVLM is trained to emit
            text = text[:-3].rstrip()
        return Caption(float(state.second), float(state.second + 1), text, state.feed.lag_seconds)

    # -- helpers ---------------------------------------------------------------------------

    @torch.inference_mode()
    def _prefill_prefix(self, state: StreamingVLMState, previous_text: str) -> None:
        system = self._tokens(f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n")
        system += self._tokens("<|im_start|>previous text\n")
        prev = self._tokens(previous_text) if previous_text.strip() else []
        # the first 512 and the last 511 tokens, as the published cut leaves them after the
        # first round (it cuts after that round; here the cache is bounded from the start)
        prev = self._policy.cut_previous(prev)
        end = self._tokens("<|im_end|>\n")
        ranges = state.cache.start(system, prev, end)
        ids = torch.tensor(system + prev + end, device=self.model.device)
        self.model.decoder(self.model.embed(ids), self._view([state], [ranges]))

    def _decode_step(
        self, ids: torch.Tensor, view: CacheView, sampler: SamplerBatch, draw: bool = True
    ) -> torch.Tensor:
        """One token of each sequence: ids ``[B]`` -> the next ids ``[B]``, on the device (the
        step :class:`DecodeGraphs` captures, with ``draw`` on)."""
        logits = self.model.decoder.logits(self.model.decoder(self.model.embed(ids), view))
        return self._sample(logits, sampler, fed=ids, draw=draw)

    def _sample(
        self,
        logits: torch.Tensor,
        batch: SamplerBatch,
        fed: torch.Tensor | None = None,
        draw: bool = True,
    ) -> torch.Tensor:
        """Structural tokens banned (``index_fill_``: no host scalar, capturable), then the
        sessions' samplers."""
        return sample(logits, self._presence.table, batch, self._banned, fed=fed, draw=draw)

    def _slots(self, states: Sequence[StreamingVLMState]) -> list[SampleSlot]:
        """Each stream's sampler slot for this step; its count of draws moves on."""
        slots = [SampleSlot(s.presence_row, s.sampling, s.draws) for s in states]
        for state in states:
            state.draws += 1
        return slots

    def _tokens(self, text: str) -> list[int]:
        return self.model.tokenizer.encode(text, add_special_tokens=False)

    def _view(self, states: list[StreamingVLMState], ranges: list[list[TokenRange]]) -> CacheView:
        plans = [s.cache.cache.plan(r) for s, r in zip(states, ranges, strict=True)]
        return self._cache_view(build_step(plans, causal=True, device=self.model.device))

    def _cache_view(self, step: CacheStep) -> CacheView:
        return CacheView(self.pool, step, self.model.rope, self.config.attention_backend)


def _synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (timing only)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
