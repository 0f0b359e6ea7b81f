// Package web holds the dashboard's static files (web/static), embedded in the binary; internal/web serves them.
// There is no build step: the app is plain ES modules and CSS, and web/static/vendor is copied from pinned npm
// packages by web/vendor.sh.
package web

import "embed"

// Static is web/static: index.html, the app's modules and styles, and vendor/.
//
//go:embed static
var Static embed.FS
