// Package credproxy is the worker's credential proxy: the one place a guest can use its owner's credentials
// without ever holding them.
//
// One HTTP listener per worker, on the bridge's gateway address (172.16.0.1:8091 by default), which the network's
// isolation rules open to the worker's guests and to nothing else. A guest authenticates with a per-VM token
// (Authorization: Bearer, x-api-key, or the password of HTTP basic auth), and the proxy forwards:
//
//   - /anthropic/...  to the model upstream (default https://api.anthropic.com; a corporate gateway with
//     model_upstream_url) with the owner's ANTHROPIC_API_KEY secret as x-api-key;
//   - /openai/...     to an OpenAI-compatible upstream with the owner's OPENAI_API_KEY as a bearer token;
//   - /git/<host>/<repo>/{info/refs,git-upload-pack,git-receive-pack}, git's smart HTTP protocol, to a configured
//     git host with the owner's token for it (GITHUB_TOKEN for github.com), only for the repositories the token
//     allows, pushes only when it allows them.
//
// Responses stream through unbuffered (Server-Sent Events are flushed event by event), and the token usage the
// model upstream reports (the JSON usage of a response, or the usage of a stream's message_start and
// message_delta events) is recorded per VM and per run through a UsageSink as it passes.
//
// Tokens. A token is signed, not stored: "aep1.<claims>.<mac>", where the claims (base64url JSON) name the VM and
// optionally a run, its git repositories and whether it may push, and the MAC is HMAC-SHA256 over them with the
// worker's proxy key (32 random bytes in <data_dir>/credproxy-key, mode 0600, made on first start). The MAC is
// checked in constant time. Nothing per VM is written anywhere: a restarted worker recomputes the same tokens from
// the same key, so VMs that outlive their worker keep working. A token lives exactly as long as its VM: every
// request looks the VM up (VMSource) and a VM that is not running on this worker — deleted, failed, stopped, moved
// — gets 401. Every request must also come from the VM's own leased address (the bridge's anti-spoofing rules pin
// each TAP to its address), so a token that leaked to another VM is refused there with 403. Replacing the key file
// revokes every token of the worker at once.
package credproxy
