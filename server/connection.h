// The sockets of HTTP connections, found among this process's descriptors by their addresses:
// cpp-httplib 0.11 gives a handler no way to see its client hang up, which a whole (non-streamed)
// answer must notice to cancel its requests (find_connection: the socket stays open, and its
// number the handler's, until the handler returns), nor a server that stops a way to end the
// connections its threads wait on (shut_connections).
#pragma once

#include <functional>
#include <string>

namespace tpx {

// The descriptor of this process's TCP socket with these peer and local addresses, or -1.
int find_connection(const std::string& remote_addr, int remote_port, int local_port);

// Shuts down (both ways) each connected TCP socket of this process on local port `local_port`
// for whose client address and port `shut` returns true; each is shut as soon as its addresses
// are read, so that a number the connection's thread has closed meanwhile is not another
// socket's by then (a window of microseconds, not closed: the number is not this thread's).
void shut_connections(int local_port, const std::function<bool(const std::string& addr, int port)>& shut);

// An address as both cpp-httplib (getnameinfo) and this file (inet_ntop) spell it: an IPv6
// zone ("%eth0") left out.
std::string address_key(const std::string& addr);

// The numeric address (as find_connection matches it) and port of socket fd's peer, or of its
// own end; false where fd is not a connected IP socket.
bool socket_address(int fd, bool peer, std::string& host, int& port);

// The peer closed its side (or the connection broke). Data the client sent ahead is left unread.
bool peer_hung_up(int fd);

}  // namespace tpx
