//go:build tools

// Pins the Toxiproxy server that ci/servers.sh builds (the fault proxy of the partition tests).
package toxiproxybuild

import _ "github.com/Shopify/toxiproxy/v2/cmd/server"
