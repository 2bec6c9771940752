//go:build tools

// Package etcdbuild pins the etcd server version (3.6) that kvstore's CI builds and tests
// against, beside Debian's etcd 3.4. It is never compiled into anything; `go build
// go.etcd.io/etcd/server/v3` reads the pin from go.mod. Requiring the server from this module
// (instead of `go install ...@version`) avoids the refusal caused by the `replace` lines in
// etcd's own go.mod.
package etcdbuild

import _ "go.etcd.io/etcd/server/v3"
