"""The lean gRPC client's HPACK pieces: the request header literals and the decoder's memo."""

from __future__ import annotations

import hpack
import pytest

from aura.edge.gateway.grpc_wire import HeaderDecoder, literal_header


@pytest.mark.parametrize("value_length", [0, 14, 15, 126, 127, 128, 300, 20_000])
def test_literal_headers_decode_with_a_standard_hpack_decoder(value_length: int) -> None:
    value = b"v" * value_length
    block = literal_header(b"x-name", value) + literal_header(b":path", b"/a/B", 4)
    block += literal_header(b"content-type", b"application/grpc", 31)
    assert hpack.Decoder().decode(block, raw=True) == [
        (b"x-name", value),
        (b":path", b"/a/B"),
        (b"content-type", b"application/grpc"),
    ]


def test_the_header_memo_gives_what_hpack_gives_as_the_dynamic_table_changes() -> None:
    encoder, decoder, plain = hpack.Encoder(), HeaderDecoder(), hpack.Decoder()
    # The newest dynamic entry is index 62 (byte be): first grpc-status 0, then, once x-new is added, x-new.
    replies = [[("grpc-status", "0")], [("grpc-status", "0")], [("x-new", "2")], [("x-new", "2")]]
    replies += [
        [(":status", "200"), ("content-type", "application/grpc")],
        [("grpc-status", "0")],
        [(":status", "200"), ("content-type", "application/grpc")],
        [("grpc-status", "5"), ("grpc-message", "not found")],
        [("grpc-status", "0")],
        [(":status", "200"), ("x-extra", "1"), ("content-type", "application/grpc")],
        [("grpc-status", "0"), hpack.NeverIndexedHeaderTuple("grpc-message", "")],  # a literal, table unchanged
    ] * 40
    for number, headers in enumerate(replies):
        if number % 50 == 49:
            encoder.header_table_size = 64 + number  # a table size update evicts entries
        block = encoder.encode(headers)
        assert decoder.decode(block) == plain.decode(block, raw=True)


def test_a_repeated_block_that_leaves_the_table_unchanged_is_decoded_once() -> None:
    encoder, decoder = hpack.Encoder(), HeaderDecoder()
    trailers = [("grpc-status", "0"), hpack.NeverIndexedHeaderTuple("grpc-message", "")]
    decoder.decode(encoder.encode(trailers))  # adds grpc-status: 0 to the table
    repeated = encoder.encode(trailers)
    assert decoder.decode(repeated) is decoder.decode(repeated)
    assert decoder.decode(repeated) == [(b"grpc-status", b"0"), (b"grpc-message", b"")]
