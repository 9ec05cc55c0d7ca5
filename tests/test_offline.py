import socket

import pytest

from helpers import NetworkBlocked


def test_socket_guard_blocks_internet():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with pytest.raises(NetworkBlocked):
        s.connect(("93.184.216.34", 80))
    s.close()
    with pytest.raises(NetworkBlocked):
        socket.create_connection(("huggingface.co", 443))
