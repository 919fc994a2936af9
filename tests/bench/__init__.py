"""`make bench`: Rank against a bare grpcio server, a bundle swap under load and the gateway."""
