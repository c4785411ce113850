// The origin of the HTTP cache test suite (npm package http-cache-tests),
// listening on one loopback address only: its own server binds every
// interface.
//
//   node origin.mjs PACKAGE_DIR PORT
import http from 'http'
import process from 'process'

const pkg = process.argv[2]
const port = parseInt(process.argv[3])
const handlers = {}
for (const name of ['config', 'file', 'state', 'test']) {
  handlers[name] = (await import(`${pkg}/server/handle-${name}.mjs`)).default
}
const baseUrl = `http://127.0.0.1:${port}/`

// The same dispatch as the package's server/server.mjs.
function handleMain (request, response) {
  const url = new URL(request.url, baseUrl)
  const pathSegs = url.pathname.split('/')
  pathSegs.shift()
  const dispatch = pathSegs.shift()
  if (['config', 'test', 'state'].includes(dispatch)) {
    handlers[dispatch](pathSegs, request, response)
  } else {
    handlers.file(url, request, response)
  }
}

http.createServer(handleMain).listen(port, '127.0.0.1', () => {
  console.log(`cache-tests origin on ${baseUrl}`)
})
