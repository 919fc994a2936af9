"""Rank, give feedback and read segments over gRPC: `python docs/examples/grpc_client.py 127.0.0.1:50051`."""

import sys

import grpc

from aura.v1 import common_pb2, decision_service_pb2, decision_service_pb2_grpc


def main(address: str) -> None:
    with grpc.insecure_channel(address) as channel:
        stub = decision_service_pb2_grpc.DecisionServiceStub(channel)
        ranked = stub.Rank(
            decision_service_pb2.RankRequest(
                surface_id="homepage.hero",
                user_ctx=common_pb2.UserContext(
                    anon_id="anon_example",
                    device="mobile",
                    referrer="https://google.com",
                    page_type="index",
                    consent=["analytics", "personalization"],
                    geo=common_pb2.Geo(country="US", region="CA"),
                ),
                limit=3,
                context={"campaign": "summer_sale", "time_of_day": "evening"},
            ),
            timeout=2.0,
        )
        print(f"{ranked.request_id} segment={ranked.segment.id} bundle={ranked.bundle_version}")
        for item in ranked.items:
            print(f"  {item.position}. {item.content_id} {item.score:.3f} {item.reason} - {item.metadata.title}")
        if ranked.items:
            ack = stub.Feedback(
                decision_service_pb2.FeedbackRequest(
                    request_id=ranked.request_id,
                    item_id=ranked.items[0].content_id,
                    reward=decision_service_pb2.Reward(type=decision_service_pb2.REWARD_TYPE_CLICK, value=1.0),
                    context=decision_service_pb2.FeedbackContext(position=1, dwell_time=12.5),
                ),
                timeout=2.0,
            )
            print(f"feedback {ack.status} {ack.feedback_id}")
        try:
            stub.Rank(decision_service_pb2.RankRequest(surface_id="nope"), timeout=2.0)
        except grpc.RpcError as error:
            print(f"unknown surface -> {error.code().name}: {error.details()}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:50051")
