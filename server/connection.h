// The sockets of HTTP connections, found among this process's descriptors by their addresses:
// cpp-httplib 0.11 gives a server that stops no way to end the connections its threads wait on
// (shut_connections); and whether a client hung up (peer_hung_up, on GatedServer::current_socket,
// as cpp-httplib gives a handler no way to see it).
#pragma once

#include <functional>
#include <string>

namespace tpx {

// Shuts down (both ways) each connected TCP socket of this process on local port `local_port`
// for whose client address and port `shut` returns true; each is shut as soon as its addresses
// are read, so that a number the connection's thread has closed meanwhile is not another
// socket's by then (a window of microseconds, not closed: the number is not this thread's).
void shut_connections(int local_port, const std::function<bool(const std::string& addr, int port)>& shut);

// An address as both cpp-httplib (getnameinfo) and this file (inet_ntop) spell it: an IPv6
// zone ("%eth0") left out.
std::string address_key(const std::string& addr);

// The numeric address (as shut_connections matches it) and port of socket fd's peer, or of its
// own end; false where fd is not a connected IP socket.
bool socket_address(int fd, bool peer, std::string& host, int& port);

// The peer closed its side, or only its sending side (or the connection broke), whether or not
// bytes it sent before are still unread (they are left so).
bool peer_hung_up(int fd);

}  // namespace tpx
