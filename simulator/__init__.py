"""A faithful stand-in for Telnyx on loopback: REST fake, signed webhooks, media-stream client.

It speaks only the wire protocol and imports nothing of the server.
"""

from simulator.audio import CallerAudio
from simulator.fake import FakeTelnyx, SimCall
from simulator.rest import RecordedCommand
from simulator.stream_params import StreamParams
from simulator.webhooks import Delivery, WebhookEvent, WebhookSigner

__all__ = ["CallerAudio", "Delivery", "FakeTelnyx", "RecordedCommand", "SimCall", "StreamParams", "WebhookEvent",
           "WebhookSigner"]
