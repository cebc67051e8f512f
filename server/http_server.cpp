// Routes: GET /health, GET /metrics, GET /v1/models (and /v1/models/ID), POST /v1/completions,
// /v1/chat/completions and /v1/admin/refit; anything else is a JSON 404. A call's prompts go on the queue together
// (or the call gets 429); its answer is written whole, or streamed as SSE when "stream" is true.
// A call whose client goes away (its socket shows the client's end, or a stream's write fails) is
// cancelled, which frees its KV slot at the next step.
#include "server/http_server.h"

#include <httplib.h>

#include <algorithm>
#include <chrono>
#include <numeric>
#include <random>

#include "common/error.h"
#include "common/json_object.h"
#include "server/auth.h"
#include "server/connection.h"
#include "server/gated_server.h"

namespace tpx {
namespace {

using nlohmann::json;
using namespace std::chrono_literals;

void reply_error(httplib::Response& res, int status, const std::string& message, const std::string& param = "",
                 const std::string& code = "") {
    res.status = status;
    // Messages may quote what the client sent, bytes that are not UTF-8 included: replaced, never
    // thrown (a throw from the 404 handler would leave cpp-httplib and end the server).
    res.set_content(error_body(status, message, param, code).dump(-1, ' ', false, json::error_handler_t::replace), "application/json");
}

// GET /v1/models/ID's path before the ID.
const std::string kModelsPrefix = "/v1/models/";

// The methods a route takes (HEAD with every GET), or nullptr where the path is no route.
const char* allowed_methods(const std::string& path) {
    if (path == "/v1/completions" || path == "/v1/chat/completions" || path == "/v1/admin/refit") return "POST";
    if (path == "/health" || path == "/metrics" || path == "/v1/models" ||
        (path.size() > kModelsPrefix.size() && path.compare(0, kModelsPrefix.size(), kModelsPrefix) == 0))
        return "GET, HEAD";
    return nullptr;
}

// Why cpp-httplib answered 400 before any handler saw the request. (A body with a
// Content-Encoding or Transfer-Encoding, or a POST without a Content-Length, is refused before it
// is read: the pre-routing handler.)
constexpr const char* kUnreadableRequest = "the request could not be read as HTTP/1.1 (its request line or headers)";

// RFC 9112 6.3: two Content-Lengths, one beside a Transfer-Encoding, or one that is not a plain
// decimal number (a list "0, 38", a sign, letters, past 18 digits: readers differ on each) leave a
// body's end ambiguous, and whatever follows it on the connection untrustworthy.
bool ambiguous_length(const httplib::Request& req) {
    if (req.get_header_value_count("Content-Length") > 1 || (req.has_header("Content-Length") && req.has_header("Transfer-Encoding")))
        return true;
    if (!req.has_header("Content-Length")) return false;
    const std::string v = req.get_header_value("Content-Length");
    return v.empty() || v.size() > 18 || v.find_first_not_of("0123456789") != std::string::npos;
}

// Whether a request carries a body: a Content-Length above 0, or a Transfer-Encoding.
bool has_body(const httplib::Request& req) {
    return req.has_header("Transfer-Encoding") || (req.has_header("Content-Length") && req.get_header_value("Content-Length") != "0");
}

int64_t unix_time() { return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count(); }

std::string call_id(bool chat) {
    static std::atomic<uint64_t> next{0};
    static const uint64_t boot = (uint64_t)std::chrono::system_clock::now().time_since_epoch().count();
    char buf[64];
    std::snprintf(buf, sizeof(buf), "%s-%llx%06llx", chat ? "chatcmpl" : "cmpl", (unsigned long long)boot,
                  (unsigned long long)next++);
    return buf;
}

template <typename Json>
std::string sse(const Json& j) {
    return "data: " + j.dump(-1, ' ', false, Json::error_handler_t::replace) + "\n\n";
}

// A streamed call as its chunks go out.
struct Stream {
    ApiCall call;
    std::vector<std::shared_ptr<ServeRequest>> requests;
    std::shared_ptr<ResponseChannel> channel;
    std::string id;
    int64_t created = 0;
    size_t finished = 0;
    bool started = false, ended = false;
    std::vector<int64_t> tokens;  // each prompt's tokens sent so far (0: its first chunk has not gone out)
};

// A body is refused (413) past what the largest call needs: max_queue prompts of max_seq_len tokens
// at 64 bytes a token (JSON ids or text), at least 1 MiB. Parsing holds many times a body's bytes,
// so without a bound a few large bodies would take the host's memory. Bodies up to it arrive
// whole in the gate, none is read by an HTTP thread.
size_t body_limit_of(const ApiLimits& limits, const RequestQueue& queue) {
    return std::max<size_t>(1 << 20, (size_t)64 * (size_t)std::max<int64_t>(limits.max_seq_len, 1) * queue.capacity());
}

GateLimits gate_limits(size_t body_limit, const std::string& api_key) {
    GateLimits g;
    g.body_bytes = body_limit;
    g.api_key = api_key;
    return g;
}

}  // namespace

HttpServer::HttpServer(HttpSettings settings, ApiLimits limits, RequestQueue& queue, ServeMetrics& metrics, RefitDesk& refits)
    : settings_(std::move(settings)), limits_(std::move(limits)), queue_(queue), metrics_(metrics), refits_(refits),
      server_(std::make_unique<GatedServer>(settings_.threads, gate_limits(body_limit_of(limits_, queue_), settings_.api_key),
                                            [this](int status) { metrics_.count_response(status); })) {
    httplib::Server& svr = *server_;
    const size_t body_limit = body_limit_of(limits_, queue_);
    svr.set_payload_max_length(body_limit);
    // Runs once a request's headers are read, before its body is. A refusal here leaves the body
    // unread; the connection ends with the answer, as every connection does after one request
    // (GatedServer: what the client still sends is read and dropped by the gate's lingering
    // close), so that the body, or a request hidden in it, is never read as a request.
    svr.set_pre_routing_handler([this, body_limit](const httplib::Request& req, httplib::Response& res) {
        auto refuse = [&](int status, const std::string& message, const std::string& code) {
            const bool unread = has_body(req) || req.method == "POST";
            reply_error(res, status, message + (unread ? " (refused, and the connection closed)" : ""), "", code);
            return httplib::Server::HandlerResponse::Handled;
        };
        // The key first, whatever else is wrong with the request (as vLLM's middleware): a caller
        // without it learns nothing of the routes (not even which exist) or of the checks below.
        const bool reading = req.method == "GET" || req.method == "HEAD";
        const bool open = settings_.api_key.empty() || (req.path == "/health" && reading);
        if (!open && !bearer_matches(req.get_header_value("Authorization"), settings_.api_key))
            return refuse(401, "Incorrect API key provided (expected \"Authorization: Bearer KEY\" with [serve] api_key)", "invalid_api_key");
        // Only these methods are served: cpp-httplib reads another's body (a PUT's, a PATCH's)
        // without a length until the client closes, whatever its size, where the gate waits for none.
        if (req.method != "GET" && req.method != "HEAD" && req.method != "POST") {
            const char* allowed = allowed_methods(req.path);
            if (!allowed) return refuse(404, "no route " + req.method + " " + req.path, "unknown_url");  // (as by any method)
            res.set_header("Allow", allowed);
            return refuse(405, req.path + " is served by " + allowed + ", not " + req.method, "method_not_allowed");
        }
        if (ambiguous_length(req))
            return refuse(400, "the request's body length is ambiguous (more than one Content-Length header, Content-Length with "
                               "Transfer-Encoding, or a Content-Length that is not one decimal number)",
                          "invalid_request");
        // Decoded, a body of 2 MB could take many GB (cpp-httplib bounds the bytes sent, not the
        // bytes they decode to); a chunked body's size is not bounded before it is read.
        const std::string encoding = req.get_header_value("Content-Encoding");
        if (!encoding.empty() && encoding != "identity")
            return refuse(415, "request bodies with a Content-Encoding ('" + encoding + "') are not taken: send the JSON as it is",
                          "unsupported_content_encoding");
        // A POST's body needs a Content-Length: with Transfer-Encoding (chunked), or with neither
        // (read until the client closes), cpp-httplib reads it whole whatever its size.
        if (req.has_header("Transfer-Encoding"))
            return refuse(411, "a request body needs a Content-Length: Transfer-Encoding '" + req.get_header_value("Transfer-Encoding") +
                                   "' is not taken, as its size is not known before it is read",
                          "length_required");
        if (req.method == "POST" && !req.has_header("Content-Length"))
            return refuse(411, "a POST needs a JSON body with a Content-Length header", "length_required");
        // Past the limit the gate handed the request on without its body: refused unread, not read
        // (slowly, by a thread of the pool) to be dropped.
        if (req.has_header("Content-Length") && std::stoull(req.get_header_value("Content-Length")) > body_limit)
            return refuse(413, "the body is larger than the " + std::to_string(body_limit) +
                                   " bytes this server takes (64 a token of run.max_seq_len, for serve.max_queue prompts)",
                          "body_too_large");
        if (req.method != "POST" && has_body(req)) return refuse(400, "a " + req.method + " request takes no body", "invalid_request");
        // GET /v1/models/ID (the SDK's models.retrieve; an ID may hold slashes) is answered here:
        // cpp-httplib matches routes by std::regex, whose "(.+)" recurses once a character, so a
        // long ID would overflow a small thread stack and end the server.
        if (reading && req.path.size() > kModelsPrefix.size() && req.path.compare(0, kModelsPrefix.size(), kModelsPrefix) == 0) {
            enter_call(req);
            const std::string id = req.path.substr(kModelsPrefix.size());
            if (id != limits_.model_name) {
                const ApiError e = unknown_model(id, limits_);
                reply_error(res, e.status, e.what(), e.param, e.code);
            } else {
                res.set_content(describe_model().dump(-1, ' ', false, json::error_handler_t::replace), "application/json");
            }
            return httplib::Server::HandlerResponse::Handled;
        }
        return httplib::Server::HandlerResponse::Unhandled;
    });
    svr.set_error_handler(httplib::Server::HandlerWithResponse([body_limit](const httplib::Request& req, httplib::Response& res) {
        if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
        const char* allowed = allowed_methods(req.path);
        if (res.status == 404 && allowed) {  // a route, by another method
            res.set_header("Allow", allowed);
            reply_error(res, 405, req.path + " is served by " + allowed + ", not " + req.method, "", "method_not_allowed");
        } else if (res.status == 404) reply_error(res, 404, "no route " + req.method + " " + req.path, "", "unknown_url");
        else if (res.status == 413)
            reply_error(res, 413, "the body is larger than the " + std::to_string(body_limit) +
                                      " bytes this server takes (64 a token of run.max_seq_len, for serve.max_queue prompts)", "", "body_too_large");
        else if (res.status == 400) reply_error(res, 400, kUnreadableRequest, "", "invalid_request");
        else if (res.status == 414) reply_error(res, 414, "the request target is longer than this server reads (about 8 KiB)", "", "uri_too_long");
        else reply_error(res, res.status, "HTTP " + std::to_string(res.status));
        return httplib::Server::HandlerResponse::Handled;
    }));
    // Called once a response is written.
    svr.set_logger([this](const httplib::Request& req, const httplib::Response& res) {
        metrics_.count_response(res.status);
        std::lock_guard<std::mutex> lock(busy_mutex_);
        busy_.erase({address_key(req.remote_addr), req.remote_port});
    });
    svr.Get("/health", [this](const httplib::Request& req, httplib::Response& res) {
        enter_call(req);
        if (!ready_) return reply_error(res, 503, "loading the model", "", "loading");
        if (draining_) return reply_error(res, 503, shutdown_message(), "", "shutting_down");
        res.set_content("{\"status\":\"ok\"}", "application/json");
    });
    svr.Get("/metrics", [this](const httplib::Request& req, httplib::Response& res) {
        enter_call(req);
        res.set_content(metrics_.render((int64_t)queue_.size()), "text/plain; version=0.0.4");
    });
    svr.Get("/v1/models", [this](const httplib::Request& req, httplib::Response& res) {
        enter_call(req);
        res.set_content(json({{"object", "list"}, {"data", json::array({describe_model()})}}).dump(-1, ' ', false, json::error_handler_t::replace),
                        "application/json");
    });
    svr.Post("/v1/completions", [this](const httplib::Request& req, httplib::Response& res) { handle_call(req, res, false); });
    svr.Post("/v1/chat/completions", [this](const httplib::Request& req, httplib::Response& res) { handle_call(req, res, true); });
    svr.Post("/v1/admin/refit", [this](const httplib::Request& req, httplib::Response& res) { handle_refit(req, res); });
}

HttpServer::~HttpServer() { stop(); }

json HttpServer::describe_model() const {
    return json{{"id", limits_.model_name}, {"object", "model"}, {"created", 0}, {"owned_by", "tpx"}, {"max_model_len", limits_.max_seq_len}};
}

int HttpServer::start() {
    // cpp-httplib's default sets SO_REUSEPORT, with which a second server binds a port already
    // listened on and the kernel splits the connections between the two: SO_REUSEADDR alone
    // (a port left in TIME_WAIT by a server just stopped is taken again; a listened one is not).
    server_->set_socket_options([](socket_t sock) {
        int yes = 1;
        setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
    });
    int port = settings_.port;
    if (port == 0) port = server_->bind_to_any_port(settings_.host);
    else if (!server_->bind_to_port(settings_.host, port)) port = -1;
    if (port < 0)
        throw Error("serve: cannot listen on " + settings_.host + ":" + std::to_string(settings_.port) +
                        " (the port is taken, or the address is not this host's: [serve] host, port)",
                    kExitBadInput);
    port_ = port;
    server_->widen_backlog();
    thread_ = std::thread([this] { server_->listen_after_bind(); });
    return port;
}

void HttpServer::stop() {
    if (!thread_.joinable()) return;
    server_->stop_gate();  // connections whose request has not arrived are closed
    server_->stop();       // no connection is taken from here on
    // The listening thread ends once every connection's thread has: one still reading a body too
    // long for the gate to wait for (up to the request's deadline) would hold it. Every connection
    // not inside a handler (enter_call) is shut until it ends; one inside (an answer still being
    // written: the calls in flight have had their last event) gets up to 5 s, the library's write
    // timeout, then is shut too.
    std::atomic<bool> ended{false};
    std::thread joiner([this, &ended] {
        thread_.join();
        ended = true;
    });
    const auto every_one = std::chrono::steady_clock::now() + 5s;
    while (!ended) {
        const bool all = std::chrono::steady_clock::now() > every_one;
        {
            std::lock_guard<std::mutex> lock(busy_mutex_);
            shut_connections(port_, [&](const std::string& addr, int port) { return all || !busy_.count({address_key(addr), port}); });
        }
        std::this_thread::sleep_for(20ms);
    }
    joiner.join();
}

void HttpServer::fail_all(const std::string& message) {
    std::lock_guard<std::mutex> lock(channels_mutex_);
    failure_ = message;  // calls registered from now on fail at once
    for (const auto& channel : channels_) {
        ServeEvent e;
        e.kind = ServeEvent::kFailed;
        e.error = message;
        channel->push(e);
    }
}

std::string HttpServer::shutdown_message() {
    std::lock_guard<std::mutex> lock(channels_mutex_);
    return failure_.empty() ? "the server is shutting down" : "the server is shutting down: " + failure_;
}

void HttpServer::enter_call(const httplib::Request& req) {
    std::lock_guard<std::mutex> lock(busy_mutex_);
    busy_.insert({address_key(req.remote_addr), req.remote_port});
}

void HttpServer::handle_refit(const httplib::Request& req, httplib::Response& res) {
    enter_call(req);
    if (!settings_.allow_refit)
        return reply_error(res, 403, "refit is turned off for this server ([serve] allow_refit = false)", "", "refit_disabled");
    if (!ready_) return reply_error(res, 503, "the model is still loading; GET /health answers 200 when it is ready", "", "loading");
    if (draining_) return reply_error(res, 503, shutdown_message(), "", "shutting_down");
    auto call = std::make_shared<RefitCall>();
    try {
        json body = parse_json_bounded(req.body);
        if (!body.is_object() || !body.contains("path") || !body["path"].is_string() || body["path"].get<std::string>().empty())
            return reply_error(res, 400, "the body must be {\"path\": \"NEW_CHECKPOINT\"} (and optionally \"abort\": true)", "path",
                               "invalid_refit");
        for (const auto& [key, value] : body.items())
            if (key != "path" && key != "abort")
                return reply_error(res, 400, "unknown key \"" + key + "\" (a refit takes \"path\" and \"abort\")", key, "invalid_refit");
        if (body.contains("abort") && !body["abort"].is_boolean())
            return reply_error(res, 400, "\"abort\" must be true or false", "abort", "invalid_refit");
        call->path = body["path"];
        if (call->path.find('\0') != std::string::npos)
            return reply_error(res, 400, "\"path\" holds a NUL character (\\u0000): no file has such a name", "path", "invalid_refit");
        call->abort = body.value("abort", false);
    } catch (const json::exception& e) {
        return reply_error(res, 400, "the body is not valid JSON: " + strip_json_tag(e), "", "invalid_json");
    }
    call->channel = std::make_shared<ResponseChannel>();
    {
        std::lock_guard<std::mutex> lock(channels_mutex_);
        if (!failure_.empty()) return reply_error(res, 500, failure_, "", "rank_failed");
        if (!refits_.file(call)) return reply_error(res, 409, "another refit is in progress; retry when it has answered", "", "refit_busy");
        channels_.insert(call->channel);  // fail_all reaches it too
        ++in_flight_;
    }
    queue_.poke();  // an idle scheduler takes it now, not after its wait for a request
    ServeEvent e;
    while (!call->channel->pop(e, 1000ms)) {
    }
    {
        std::lock_guard<std::mutex> lock(channels_mutex_);
        if (channels_.erase(call->channel)) --in_flight_;
    }
    if (e.kind == ServeEvent::kFailed) return reply_error(res, e.status, e.error, e.status == 400 ? "path" : "", e.code);
    res.set_content(e.text, "application/json");
}

void HttpServer::handle_call(const httplib::Request& req, httplib::Response& res, bool chat) {
    enter_call(req);
    if (!ready_) return reply_error(res, 503, "the model is still loading; GET /health answers 200 when it is ready", "", "loading");
    if (draining_) return reply_error(res, 503, shutdown_message(), "", "shutting_down");
    json body;
    try {
        body = parse_json_bounded(req.body);
    } catch (const json::exception& e) {
        return reply_error(res, 400, "the body is not valid JSON: " + strip_json_tag(e), "", "invalid_json");
    }
    auto stream = std::make_shared<Stream>();
    try {
        stream->call = parse_call(body, limits_, chat);
    } catch (const ApiError& e) {
        return reply_error(res, e.status, e.what(), e.param, e.code);
    } catch (const std::exception& e) {  // the tokenizer's or template's own errors
        return reply_error(res, 400, e.what(), chat ? "messages" : "prompt");
    }
    ApiCall& call = stream->call;
    // A stream's chunks go out in chunked encoding, which an HTTP/1.0 client cannot read (RFC
    // 9112 forbids sending it one).
    if (call.stream && req.version == "HTTP/1.0")
        return reply_error(res, 400, "streaming needs HTTP/1.1 (its chunks are sent in chunked transfer coding, which HTTP/1.0 has not)",
                           "stream", "invalid_value");
    if (call.prompts.size() > queue_.capacity())  // 429 says "retry later": this call never fits
        return reply_error(res, 400,
                           "the call has " + std::to_string(call.prompts.size()) + " prompts, more than the " + std::to_string(queue_.capacity()) +
                               " the queue holds ([serve] max_queue): split it",
                           "prompt", "too_many_prompts");
    stream->channel = std::make_shared<ResponseChannel>();
    stream->id = call_id(chat);
    stream->created = unix_time();
    stream->tokens.assign(call.prompts.size(), 0);
    const uint64_t seed = call.seed ? *call.seed : std::random_device()();
    for (size_t i = 0; i < call.prompts.size(); ++i) {
        auto r = std::make_shared<ServeRequest>();
        r->index = (int)i;
        r->prompt = call.prompts[i];
        r->max_tokens = call.max_tokens[i];
        r->temperature = call.temperature;
        r->top_k = call.top_k;
        r->top_p = call.top_p;
        r->seed = seed;
        r->stop = call.stop;
        r->skip_special_tokens = call.skip_special_tokens;
        r->stop_token_ids = call.stop_token_ids;
        r->ignore_eos = call.ignore_eos;
        r->logprobs = call.logprobs;
        r->presence_penalty = call.presence_penalty;
        r->frequency_penalty = call.frequency_penalty;
        r->repetition_penalty = call.repetition_penalty;
        r->min_tokens = call.min_tokens;
        r->channel = stream->channel;
        stream->requests.push_back(std::move(r));
    }
    {
        std::lock_guard<std::mutex> lock(channels_mutex_);
        if (!failure_.empty()) return reply_error(res, 500, failure_, "", "rank_failed");
        channels_.insert(stream->channel);
    }
    ++in_flight_;
    // Undoes the two lines above once the answer is written (or the client is gone).
    auto done = [this, stream] {
        std::lock_guard<std::mutex> lock(channels_mutex_);
        if (channels_.erase(stream->channel)) --in_flight_;
    };
    if (!queue_.push(stream->requests)) {
        done();
        return reply_error(res, 429, "the queue is full ([serve] max_queue requests wait already); retry later", "", "queue_full");
    }
    const std::string& model = limits_.model_name;
    if (!call.stream) {
        // A client that hangs up cancels the call, as a broken stream does.
        const int socket = GatedServer::current_socket();
        std::vector<ChoiceResult> choices(call.prompts.size());
        for (size_t finished = 0; finished < choices.size();) {
            if (socket >= 0 && peer_hung_up(socket)) {  // (a client that only half-closed reads this)
                for (auto& r : stream->requests) r->cancelled = true;
                done();
                return reply_error(res, 499, "the client closed its connection before the answer: the call was cancelled", "",
                                   "client_closed_request");
            }
            ServeEvent e;
            if (!stream->channel->pop(e, 200ms)) continue;
            if (e.kind == ServeEvent::kFailed) {
                for (auto& r : stream->requests) r->cancelled = true;
                done();
                return reply_error(res, e.status, e.error, "", e.code);
            }
            if (e.kind != ServeEvent::kFinished) continue;
            choices[e.index] = {e.text, e.output, {e.finish_reason, e.stop_id, e.stop_string}, std::move(e.logprobs)};
            ++finished;
        }
        res.set_content(response_body(call, stream->id, stream->created, model, choices).dump(-1, ' ', false, json::error_handler_t::replace),
                        "application/json");
        done();
        return;
    }
    res.set_header("Cache-Control", "no-cache");
    // A client that closes, or only half-closes, its connection cancels the stream, as it does a
    // call answered at once (a write to a closed connection would also fail, but not to a
    // half-closed one): the client then reads the 200 and the chunks written so far.
    const int socket = GatedServer::current_socket();
    res.set_chunked_content_provider(
        "text/event-stream",
        [stream, model, socket](size_t, httplib::DataSink& sink) {
            Stream& s = *stream;
            if (socket >= 0 && peer_hung_up(socket)) return false;
            auto write = [&](const std::string& text) { return sink.write(text.data(), text.size()); };
            // A prompt's chunk, with its usage so far where the call asks (vLLM's continuous_usage_stats).
            auto chunk = [&](ResponseJson c, int index) {
                if (s.call.continuous_usage) c["usage"] = prompt_usage(s.call, index, s.tokens[(size_t)index]);
                return write(sse(c));
            };
            if (!s.started) {
                s.started = true;
                if (s.call.chat)
                    for (size_t i = 0; i < s.requests.size(); ++i)
                        if (!chunk(stream_role_chunk(s.call, s.id, s.created, model, (int)i), (int)i)) return false;
            }
            ServeEvent e;
            if (!s.channel->pop(e, 200ms)) return sink.is_writable();
            bool ok = true;
            if (e.kind == ServeEvent::kFailed) {
                write(sse(error_body(e.status, e.error, "", e.code)));  // then [DONE], as vLLM ends a failed stream
                write("data: [DONE]\n\n");
                s.ended = true;
                sink.done();
                return true;
            }
            // (A chat's prompt_token_ids went with its role chunk.)
            const bool first = !s.call.chat && s.tokens[(size_t)e.index] == 0;
            if (e.kind == ServeEvent::kToken) {
                ++s.tokens[(size_t)e.index];
                ok = chunk(stream_chunk(s.call, s.id, s.created, model, e.index, e.text, {e.token}, {}, first, logprobs_body(s.call, e.logprobs)),
                           e.index);
            } else {
                ++s.finished;
                // An aborted sequence (a refit) has no new token: its last one went out already (and
                // its last chunk's logprobs are null).
                const bool abort = e.finish_reason == "abort";
                std::vector<int32_t> last = abort ? std::vector<int32_t>{} : std::vector<int32_t>{e.token};
                std::vector<TokenLogprobs> last_logprobs;
                if (!abort && !e.logprobs.empty()) last_logprobs.push_back(e.logprobs.back());
                s.tokens[(size_t)e.index] = (int64_t)e.output.size();
                ok = chunk(stream_chunk(s.call, s.id, s.created, model, e.index, e.tail, last, {e.finish_reason, e.stop_id, e.stop_string}, first,
                                        last.empty() ? ResponseJson() : logprobs_body(s.call, last_logprobs)),
                           e.index);
                if (ok && s.finished == s.requests.size()) {
                    const int64_t generated = std::accumulate(s.tokens.begin(), s.tokens.end(), int64_t{0});
                    if (s.call.include_usage) ok = write(sse(stream_usage_chunk(s.call, s.id, s.created, model, generated)));
                    ok = ok && write("data: [DONE]\n\n");
                    s.ended = true;
                    sink.done();
                }
            }
            return ok;
        },
        [stream, done](bool) {
            // Ended before its last chunk: the client went away; the scheduler drops it.
            if (!stream->ended)
                for (auto& r : stream->requests) r->cancelled = true;
            done();
        });
}

}  // namespace tpx
