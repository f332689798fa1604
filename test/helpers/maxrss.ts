// Preload for child processes whose peak memory a test or benchmark checks (`node --import <this> ...`): on exit it
// writes the process's peak resident set size to stderr as a last line `maxrss_kb=N`.
process.on('exit', () => { process.stderr.write(`\nmaxrss_kb=${process.resourceUsage().maxRSS}\n`); });
export {};
