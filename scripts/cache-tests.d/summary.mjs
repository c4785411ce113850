// Classifies results of the HTTP cache test suite as its own pages do
// (lib/display.mjs): a required test passes or fails, an optimal one
// passes or falls short, a check answers yes or no; setup failures,
// retries and failed dependencies are counted apart.
//
//   node summary.mjs PACKAGE_DIR KNOWN_FILE RESULTS.json [OTHER.json ...]
//
// Prints one row per results file. With KNOWN_FILE, the first results
// file is checked against it: every test that neither passes nor is a
// check must be listed there, or the exit code is 1. Listed tests that
// now pass are reported (the list can shrink).
import fs from 'fs'
import process from 'process'

const [pkg, knownFile, ...files] = process.argv.slice(2)
const suites = (await import(`${pkg}/tests/index.mjs`)).default
suites.push((await import(`${pkg}/tests/surrogate-control.mjs`)).default)
const tests = new Map()
for (const suite of suites) {
  for (const test of suite.tests) {
    if (test.browser_only !== true) tests.set(test.id, test)
  }
}

function classify (results, id, honourDependencies = true) {
  const test = tests.get(id)
  const result = results[id]
  if (result === undefined) return 'untested'
  if (honourDependencies && test.depends_on) {
    for (const dependency of test.depends_on) {
      if (!['pass', 'yes'].includes(classify(results, dependency))) return 'dependency'
    }
  }
  if (result[0] === 'Setup') return result[1] === 'retry' ? 'retry' : 'setup'
  const kind = test.kind || 'required'
  if (kind === 'required') return result === true ? 'pass' : 'fail'
  if (kind === 'optimal') return result === true ? 'pass' : 'short'
  return result === true ? 'yes' : 'no'
}

const columns = ['pass', 'fail', 'short', 'yes', 'no', 'setup', 'retry', 'dependency', 'untested']
console.log(['results'.padEnd(22), ...columns.map(c => c.padStart(11))].join(''))
const classified = []
for (const file of files) {
  const results = JSON.parse(fs.readFileSync(file))
  const counts = Object.fromEntries(columns.map(c => [c, 0]))
  const byId = new Map()
  for (const id of tests.keys()) {
    const c = classify(results, id)
    counts[c]++
    byId.set(id, [c, results[id]])
  }
  classified.push(byId)
  const name = file.split('/').pop().replace(/\.json$/, '')
  console.log([name.padEnd(22), ...columns.map(c => String(counts[c]).padStart(11))].join(''))
}

if (knownFile) {
  const known = new Map()
  for (const line of fs.readFileSync(knownFile, 'utf8').split('\n')) {
    const text = line.replace(/#.*/, '').trim()
    if (!text) continue
    const [id, ...reason] = text.split(/\s+/)
    known.set(id, reason.join(' '))
  }
  let unexpected = 0
  for (const [id, [c, result]] of classified[0]) {
    const settled = ['pass', 'yes', 'no'].includes(c)
    if (!settled && !known.has(id)) {
      unexpected++
      console.log(`UNEXPECTED ${c}: ${id} ${JSON.stringify(result)}`)
    }
    if (settled && known.has(id) && c === 'pass') {
      console.log(`now passes (remove from ${knownFile.split('/').pop()}): ${id}`)
    }
  }
  for (const id of known.keys()) {
    if (!tests.has(id)) console.log(`listed but not in the suite: ${id}`)
  }
  console.log(unexpected === 0
    ? `${known.size} known shortfalls, no unexpected ones`
    : `${unexpected} unexpected result(s)`)
  process.exit(unexpected === 0 ? 0 : 1)
}
