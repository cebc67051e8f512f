// The socket of an HTTP call being handled, found by its addresses: cpp-httplib 0.11 gives a
// handler no way to see its client hang up, which a whole (non-streamed) answer must notice to
// cancel its requests. The socket stays open (and its number ours) until the handler returns.
#pragma once

#include <string>
#include <vector>

namespace tpx {

// The descriptor of this process's TCP socket with these peer and local addresses, or -1.
int find_connection(const std::string& remote_addr, int remote_port, int local_port);

// This process's connected TCP sockets on local port `local_port` (a listener's accepted ones).
struct Connection {
    int fd = -1;
    std::string remote_addr;
    int remote_port = -1;
};
std::vector<Connection> connections_on(int local_port);

// The peer closed its side (or the connection broke). Data the client sent ahead is left unread.
bool peer_hung_up(int fd);

}  // namespace tpx
