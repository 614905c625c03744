"""stream/protocol.py: parsing, validation and the connection state machine, without sockets."""

from __future__ import annotations

import json
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from framestream.stream.protocol import (
    ERROR_CODES,
    HEADER,
    PROTOCOL_VERSION,
    SAMPLING_LIMITS,
    Catalog,
    Connection,
    ConnectionState,
    FrameFormat,
    FrameHeader,
    FrameKind,
    Hello,
    InputFrame,
    OutputOptions,
    Pause,
    PipelineInfo,
    PromptUpdate,
    ProtocolError,
    Question,
    RestyleUpdate,
    Resume,
    SessionStart,
    Stop,
    encode,
)
from framestream.stream.requests import GenerationRequest, RestyleRequest, UnderstandingRequest

WIRE_HEADER = "<2sBBIQdB3xHH"  # docs/protocol.md


CATALOG = Catalog(
    {
        "longlive": PipelineInfo("generation", 16.0, (64, 96), restyles=True),
        "tiny_decoded": PipelineInfo("generation", 16.0, (64, 96)),
        "streaming_vlm": PipelineInfo("understanding", 2.0),
    },
    preset="tiny",
    max_frame_pixels=256 * 256,
)


def ready(**kwargs: Any) -> Connection:
    connection = Connection(**{"catalog": CATALOG, **kwargs})
    connection.receive(json.dumps({"type": "hello", "version": PROTOCOL_VERSION}))
    return connection


def message(kind: str, **fields: Any) -> str:
    return json.dumps({"type": kind, **fields})


def refused(connection: Connection, data: str | bytes) -> str:
    with pytest.raises(ProtocolError) as info:
        connection.receive(data)
    assert info.value.code in ERROR_CODES
    return info.value.code


def input_frame(session: int = 1, kind: int = 2, fmt: int = 1, payload: bytes = b"jpeg") -> bytes:
    return struct.pack(WIRE_HEADER, b"SV", 1, kind, session, 3, 0.25, fmt, 64, 48) + payload


# -- the state machine -------------------------------------------------------------------------


def test_hello_opens_the_connection() -> None:
    connection = Connection()
    assert connection.state is ConnectionState.AWAITING_HELLO
    assert connection.receive(message("hello", version=1)) == Hello(1, None)
    assert connection.state is ConnectionState.READY


@pytest.mark.parametrize(
    "data",
    [
        message("session.start", pipeline="longlive", params={"prompt": "x"}),
        message("pause", session=1),
        input_frame(),
    ],
)
def test_everything_before_hello_is_not_ready(data: str | bytes) -> None:
    connection = Connection(catalog=CATALOG)
    assert refused(connection, data) == "not_ready"
    assert connection.state is ConnectionState.AWAITING_HELLO
    connection.receive(message("hello", version=1))  # still possible afterwards


def test_second_hello_is_not_ready() -> None:
    connection = ready()
    assert refused(connection, message("hello", version=1)) == "not_ready"
    assert connection.state is ConnectionState.READY


def test_unsupported_version() -> None:
    connection = Connection()
    assert refused(connection, message("hello", version=2)) == "unsupported_version"
    assert connection.state is ConnectionState.AWAITING_HELLO


@pytest.mark.parametrize("token", [None, "wrong", ""])
def test_token_required(token: str | None) -> None:
    connection = Connection(token="secret")
    assert refused(connection, message("hello", version=1, token=token)) == "unauthorized"
    assert refused(connection, message("hello", version=1)) == "unauthorized"
    assert connection.receive(message("hello", version=1, token="secret")) == Hello(1, "secret")
    assert connection.state is ConnectionState.READY


def test_token_ignored_without_one_configured() -> None:
    assert Connection().receive(message("hello", version=1, token="x")) == Hello(1, "x")


def test_closed_connection_refuses_everything() -> None:
    connection = ready()
    connection.close()
    assert connection.state is ConnectionState.CLOSED
    assert refused(connection, message("pause", session=1)) == "not_ready"


# -- every message type ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            message("session.start", pipeline="longlive", params={"prompt": "a fox", "seed": 3}),
            SessionStart("longlive", GenerationRequest("a fox", 3, 64, 96), OutputOptions()),
        ),
        (
            message(
                "session.start",
                pipeline="longlive",
                preset="tiny",
                request_id="r1",
                params={
                    "prompt": "a fox",
                    "height": 256,
                    "width": 256,
                    "format": "png",
                    "quality": 1,
                    "realtime": False,
                    "record": True,
                },
            ),
            SessionStart(
                "longlive",
                GenerationRequest("a fox", 0, 256, 256),
                OutputOptions(FrameFormat.PNG, 1, False, True),
                "r1",
            ),
        ),
        (
            message("session.start", pipeline="streaming_vlm", params={"previous_text": "x"}),
            SessionStart("streaming_vlm", UnderstandingRequest(previous_text="x")),
        ),
        (
            message("prompt.update", session=7, prompt="a bird", transition_chunks=4),
            PromptUpdate(7, "a bird", 4),
        ),
        (message("prompt.update", session=7, prompt="a bird"), PromptUpdate(7, "a bird", 0)),
        (
            message("prompt.update", session=7, prompt="a bird", at_frame=48),
            PromptUpdate(7, "a bird", 0, 48),
        ),
        (
            message("prompt.update", session=7, prompt="a bird", at_frame=None),
            PromptUpdate(7, "a bird", 0, None),
        ),
        (message("question", session=2, text="what is red?"), Question(2, "what is red?")),
        (message("pause", session=1), Pause(1)),
        (message("resume", session=1), Resume(1)),
        (message("stop", session=2**32 - 1), Stop(2**32 - 1)),
    ],
)
def test_messages_parse(data: str, expected: Any) -> None:
    assert ready().receive(data) == expected


def test_input_frame_parses() -> None:
    parsed = ready().receive(input_frame(session=5, payload=b"\xff\xd8 jpeg bytes"))
    assert isinstance(parsed, InputFrame)
    assert parsed.header == FrameHeader(FrameKind.INPUT, 5, 3, 0.25, FrameFormat.JPEG, 64, 48)
    assert parsed.payload == b"\xff\xd8 jpeg bytes"


# -- validation errors -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text", ["", "{", "not json", "[1, 2]", '"hello"', "3", "null", "[" * 100000]
)
def test_bad_json(text: str) -> None:
    assert refused(ready(), text) == "bad_json"


@pytest.mark.parametrize("kind", ["nope", "welcome", "session.started", "HELLO", ""])
def test_unknown_type(kind: str) -> None:
    assert refused(ready(), message(kind)) == "unknown_type"


@pytest.mark.parametrize(
    "data",
    [
        json.dumps({"session": 1}),  # no type
        json.dumps({"type": 5}),
        json.dumps({"type": None}),
        message("hello"),  # hello without version, before hello
        message("hello", version="1"),
        message("hello", version=True),  # a bool is not an int
        message("hello", version=1.0),
        message("hello", version=1, token=5),
    ],
)
def test_invalid_hello(data: str) -> None:
    assert refused(Connection(), data) == "invalid_message"


@pytest.mark.parametrize(
    "data",
    [
        message("session.start"),  # no pipeline
        message("session.start", pipeline=1),
        message("session.start", pipeline="longlive", params="prompt"),
        message("session.start", pipeline="longlive", params=[]),
        message("session.start", pipeline="longlive", params={}),  # no prompt
        message("session.start", pipeline="longlive", params={"prompt": " "}),
        message("session.start", pipeline="longlive", params={"prompt": "x" * 2001}),
        message("session.start", pipeline="longlive", params={"prompt": "a", "seed": -1}),
        message("session.start", pipeline="longlive", params={"prompt": "a", "seed": 2**64}),
        message("session.start", pipeline="longlive", params={"prompt": "a", "height": 100}),
        message("session.start", pipeline="longlive", params={"prompt": "a", "width": 0}),
        message("session.start", pipeline="longlive", params={"prompt": "a", "width": True}),
        message("session.start", pipeline="longlive", params={"prompt": "a", "format": "gif"}),
        message("session.start", pipeline="longlive", params={"prompt": "a", "format": 1}),
        message("session.start", pipeline="longlive", params={"prompt": "a", "quality": 101}),
        message("session.start", pipeline="longlive", params={"prompt": "a", "record": 1}),
        message("session.start", pipeline="streaming_vlm", params={"instruction": 5}),
        message("session.start", pipeline="streaming_vlm", params={"previous_text": "x" * 20001}),
        message("session.start", pipeline="longlive", preset=3),
        message("session.start", pipeline="longlive", request_id=1),
        message("session.start", pipeline="longlive", request_id="r" * 129),
        message("prompt.update", prompt="x"),  # no session
        message("prompt.update", session=1),  # no prompt
        message("prompt.update", session=1, prompt=""),
        message("prompt.update", session=1, prompt="   \n"),
        message("prompt.update", session=1, prompt="x" * 2001),
        message("prompt.update", session=1, prompt=5),
        message("prompt.update", session=1, prompt="x", transition_chunks=-1),
        message("prompt.update", session=1, prompt="x", transition_chunks=65),
        message("prompt.update", session=1, prompt="x", transition_chunks=1.5),
        message("prompt.update", session=1, prompt="x", transition_chunks=True),
        message("prompt.update", session=1, prompt="x", at_frame=-1),
        message("prompt.update", session=1, prompt="x", at_frame=2**64),
        message("prompt.update", session=1, prompt="x", at_frame=48.0),
        message("prompt.update", session=1, prompt="x", at_frame=True),
        message("prompt.update", session=1, prompt="x", at_frame="48"),
        message("question", session=1, text=""),
        message("question", session=1),
        message("pause", session=0),
        message("pause", session=-1),
        message("resume", session=2**32),
        message("stop", session="1"),
        message("stop", session=True),
        message("stop", session=1.0),
        message("stop", session=None),
        message("stop"),
    ],
)
def test_invalid_message(data: str) -> None:
    assert refused(ready(), data) == "invalid_message"


def test_what_the_server_does_not_run_is_refused() -> None:
    start = message("session.start", pipeline="nope", params={"prompt": "a"}, request_id="q")
    with pytest.raises(ProtocolError) as info:
        ready().receive(start)
    assert (info.value.code, info.value.request_id) == ("unknown_pipeline", "q")
    other_preset = message("session.start", pipeline="longlive", preset="big", params={})
    assert refused(ready(), other_preset) == "unknown_pipeline"
    huge = {"prompt": "a", "height": 512, "width": 512}  # within 2**16, over max_frame_pixels
    assert refused(ready(), message("session.start", pipeline="longlive", params=huge)) == (
        "frame_too_large"
    )


def test_a_refusal_before_hello_keeps_its_request_id() -> None:
    start = message(
        "session.start", pipeline="longlive", request_id="early", params={"prompt": "a"}
    )
    with pytest.raises(ProtocolError) as info:
        Connection(catalog=CATALOG).receive(start)
    assert (info.value.code, info.value.request_id) == ("not_ready", "early")


def test_an_invalid_request_id_is_not_echoed() -> None:
    start = '{"type": "session.start", "pipeline": 1, "request_id": "\\ud800"}'
    with pytest.raises(ProtocolError) as info:
        ready().receive(start)
    assert info.value.request_id is None


def test_boundaries_accepted() -> None:
    connection = ready()
    assert connection.receive(message("prompt.update", session=1, prompt="x" * 2000)).prompt
    update = connection.receive(
        message("prompt.update", session=1, prompt="x", transition_chunks=64)
    )
    assert update == PromptUpdate(1, "x", 64)
    for frame in (0, 2**64 - 1):
        update = connection.receive(message("prompt.update", session=1, prompt="x", at_frame=frame))
        assert update == PromptUpdate(1, "x", 0, frame)


def test_message_too_large() -> None:
    connection = ready(max_message_bytes=64)
    text = message("prompt.update", session=1, prompt="x" * 40)
    assert len(text) > 64
    assert refused(connection, text) == "message_too_large"
    assert refused(connection, input_frame(payload=b"\0" * 64)) == "message_too_large"
    # the limit counts UTF-8 bytes, not characters
    wide = json.dumps({"type": "stop", "session": 1, "x": "é" * 20}, ensure_ascii=False)
    assert len(wide) <= 64 < len(wide.encode())
    assert refused(connection, wide) == "message_too_large"
    assert connection.receive(message("stop", session=1)) == Stop(1)  # still usable
    assert refused(Connection(max_message_bytes=8), "x" * 9) == "message_too_large"  # before hello


# -- binary frames -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(FrameKind))
@pytest.mark.parametrize("fmt", list(FrameFormat))
def test_header_round_trip(kind: FrameKind, fmt: FrameFormat) -> None:
    header = FrameHeader(kind, 2**32 - 1, 2**64 - 1, 12.0625, fmt, 65535, 1)
    packed = header.pack()
    assert len(packed) == HEADER.size == 32
    assert packed == struct.pack(
        WIRE_HEADER, b"SV", 1, kind, 2**32 - 1, 2**64 - 1, 12.0625, fmt, 65535, 1
    )
    assert packed[25:28] == b"\0\0\0"
    assert FrameHeader.unpack(packed + b"rest") == header


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"SV\x01\x02",  # shorter than the header
        b"XY" + input_frame()[2:],  # magic
        input_frame()[:2] + b"\x02" + input_frame()[3:],  # version
        input_frame(kind=0),
        input_frame(kind=3),
        input_frame(fmt=0),
        input_frame(fmt=5),
        input_frame(session=0),
    ],
)
def test_bad_frame(data: bytes) -> None:
    assert refused(ready(), data) == "bad_frame"


def test_header_unpack_refuses_bad_headers() -> None:
    with pytest.raises(ProtocolError, match="bad_frame"):
        FrameHeader.unpack(b"SV")
    with pytest.raises(ProtocolError, match="bad_frame"):
        FrameHeader.unpack(input_frame(fmt=9))


def test_client_sent_video_frames_are_refused() -> None:
    assert refused(ready(), input_frame(kind=FrameKind.VIDEO)) == "bad_frame"


def test_format_names() -> None:
    assert [FrameFormat.from_name(n) for n in ("jpeg", "png", "raw", "h264")] == list(FrameFormat)
    with pytest.raises(ProtocolError) as info:
        FrameFormat.from_name("gif")
    assert info.value.code == "invalid_message"


# -- server messages ---------------------------------------------------------------------------


def test_encode() -> None:
    text = encode("error", code="cache_full", message="no room", request_id="r1")
    assert text == '{"type":"error","code":"cache_full","message":"no room","request_id":"r1"}'
    assert json.loads(encode("session.ended", session=3, reason="stopped")) == {
        "type": "session.ended",
        "session": 3,
        "reason": "stopped",
    }
    assert encode("metrics", fps=15.5, queue=[]) == '{"type":"metrics","fps":15.5,"queue":[]}'


def test_protocol_error() -> None:
    error = ProtocolError("unknown_session", "no session 4", session=4)
    assert (error.code, error.message, error.session) == ("unknown_session", "no session 4", 4)
    assert str(error) == "unknown_session: no session 4"
    with pytest.raises(AssertionError):
        ProtocolError("no_such_code", "x")


# -- properties --------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
known_types = st.sampled_from(
    ["hello", "session.start", "prompt.update", "question", "pause", "resume", "stop", "x"]
)
fields = st.sampled_from(
    ["version", "token", "pipeline", "preset", "params", "request_id", "session", "prompt",
     "transition_chunks", "text"]
)  # fmt: skip
messages = st.builds(
    lambda kind, body: {"type": kind, **body},
    known_types,
    st.dictionaries(fields, json_values, max_size=5),
)


def _only_protocol_errors(connection: Connection, data: str | bytes) -> None:
    try:
        connection.receive(data)
    except ProtocolError as exc:
        assert exc.code in ERROR_CODES


@settings(max_examples=500, deadline=None)
@given(st.lists(messages | json_values, min_size=1, max_size=4))
def test_random_json_raises_only_protocol_errors(objects: list[Any]) -> None:
    connection = Connection(token=None)
    for obj in objects:
        _only_protocol_errors(connection, json.dumps(obj))
    ready_connection = ready()
    for obj in objects:
        _only_protocol_errors(ready_connection, json.dumps(obj))


@settings(max_examples=500, deadline=None)
@given(
    st.binary(max_size=64)
    | st.builds(
        lambda header, tail: header + tail,
        st.binary(min_size=32, max_size=32),
        st.binary(max_size=8),
    )
    | st.builds(
        lambda fields, tail: b"SV\x01" + fields + tail,
        st.binary(min_size=29, max_size=29),
        st.binary(max_size=8),
    ),
    st.text(max_size=64),
)
def test_random_bytes_raise_only_protocol_errors(data: bytes, text: str) -> None:
    for connection in (Connection(), ready()):
        _only_protocol_errors(connection, data)
        _only_protocol_errors(connection, text)


# -- an understanding session's sampler ----------------------------------------------------------


def sampler(**params: Any) -> UnderstandingRequest:
    start = message("session.start", pipeline="streaming_vlm", params=params)
    return ready().receive(start).request


def test_sampler_params_parse_and_absent_ones_are_left_out() -> None:
    assert sampler(instruction="x") == UnderstandingRequest("x")
    assert sampler(temperature=None, seed=None) == UnderstandingRequest()
    request = sampler(temperature=0, repetition_penalty=1, top_k=50, seed=2**63 - 1)
    assert (request.temperature, request.repetition_penalty, request.top_k, request.seed) == (
        0.0,
        1.0,
        50,
        2**63 - 1,
    )


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", -0.5),
        ("temperature", 10.5),
        ("temperature", float("nan")),
        ("temperature", 10**400),
        ("temperature", "0.9"),
        ("temperature", True),
        ("repetition_penalty", 0),
        ("repetition_penalty", float("inf")),
        ("top_k", 0),
        ("top_k", 1001),
        ("top_k", 50.0),
        ("seed", -1),
        ("seed", 2**63),
        ("seed", False),
    ],
)
def test_sampler_params_out_of_range_name_the_field(field: str, value: Any) -> None:
    with pytest.raises(ProtocolError) as info:
        sampler(**{field: value})
    assert info.value.code == "invalid_message"
    assert info.value.message.startswith(f"params.{field} must be")


def test_sampler_limits_are_the_sampler_s() -> None:
    from framestream.stream.pipelines import sampling

    ours = {
        "temperature": (0.0, sampling.MAX_TEMPERATURE, float),
        "repetition_penalty": (0.0, sampling.MAX_REPETITION_PENALTY, float),
        "top_k": (1, sampling.MAX_TOP_K, int),
        "seed": (0, sampling.MAX_SEED, int),
    }
    assert ours == SAMPLING_LIMITS


# -- restyle -----------------------------------------------------------------------------------


def start_message(request_id: str | None = None, **params: Any) -> str:
    params = {"prompt": "x", **params}
    return message("session.start", pipeline="longlive", params=params, request_id=request_id)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        (False, None),
        (True, RestyleRequest()),
        ({}, RestyleRequest()),
        ({"strength": None}, RestyleRequest()),
        ({"strength": 0.25}, RestyleRequest(0.25)),
        ({"strength": 1}, RestyleRequest(1.0)),
        ({"strength": 1e-9, "later": "ignored"}, RestyleRequest(1e-9)),
    ],
)
def test_params_restyle_parses(value: Any, expected: RestyleRequest | None) -> None:
    params = {} if value is None else {"restyle": value}
    start = ready().receive(start_message(**params))
    assert isinstance(start, SessionStart)
    assert isinstance(start.request, GenerationRequest)
    assert start.request.restyle == expected
    assert start.request.prompt == "x" and (start.request.height, start.request.width) == (64, 96)


@pytest.mark.parametrize(
    "value",
    [
        {"strength": 0},
        {"strength": -0.5},
        {"strength": 1.0000001},
        {"strength": 10**400},
        {"strength": True},
        {"strength": "0.5"},
        {"strength": [0.5]},
        "yes",
        1,
        0.5,
        [],
    ],
)
def test_bad_params_restyle_is_invalid_naming_the_field(value: Any) -> None:
    with pytest.raises(ProtocolError) as info:
        ready().receive(start_message(restyle=value, request_id="r9"))
    assert info.value.code == "invalid_message" and info.value.request_id == "r9"
    assert "params.restyle" in info.value.message


def test_a_nan_strength_is_invalid() -> None:
    # json.dumps writes NaN, which Python's json reads back: the check must not let it through
    data = '{"type":"session.start","pipeline":"longlive","params":{"prompt":"x",' + (
        '"restyle":{"strength":NaN}}}'
    )
    assert refused(ready(), data) == "invalid_message"


def test_a_pipeline_that_cannot_encode_refuses_restyle() -> None:
    start = message("session.start", pipeline="tiny_decoded", params={"prompt": "x"})
    assert isinstance(ready().receive(start), SessionStart)
    restyle = message(
        "session.start", pipeline="tiny_decoded", params={"prompt": "x", "restyle": True}
    )
    assert refused(ready(), restyle) == "unknown_pipeline"


def test_an_understanding_session_ignores_restyle() -> None:
    start = ready().receive(
        message("session.start", pipeline="streaming_vlm", params={"restyle": {"strength": 9}})
    )
    assert isinstance(start, SessionStart) and isinstance(start.request, UnderstandingRequest)


def test_restyle_update_parses() -> None:
    connection = ready()
    update = connection.receive(message("restyle.update", session=3, strength=0.4))
    assert update == RestyleUpdate(3, 0.4)
    assert connection.receive(message("restyle.update", session=3, strength=1)) == RestyleUpdate(
        3, 1.0
    )


@pytest.mark.parametrize(
    "fields",
    [
        {"session": 3},
        {"session": 3, "strength": 0},
        {"session": 3, "strength": 2},
        {"session": 3, "strength": None},
        {"session": 3, "strength": False},
        {"session": 3, "strength": "0.5"},
        {"strength": 0.5},
        {"session": 0, "strength": 0.5},
        {"session": "3", "strength": 0.5},
    ],
)
def test_bad_restyle_update_is_invalid(fields: dict[str, Any]) -> None:
    with pytest.raises(ProtocolError) as info:
        ready().receive(message("restyle.update", **fields))
    assert info.value.code == "invalid_message"
    if fields.get("session") == 3:  # a refusal names the session it was about
        assert info.value.session == 3


def test_restyle_update_before_hello_is_not_ready() -> None:
    connection = Connection(catalog=CATALOG)
    assert refused(connection, message("restyle.update", session=1, strength=0.5)) == "not_ready"
