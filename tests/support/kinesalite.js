// Starts kinesalite on 127.0.0.1 only (its own CLI binds every interface).
// usage: node kinesalite.js PORT [PERSISTENT_DIR]
const kinesalite = require('kinesalite');
const port = Number(process.argv[2]);
const path = process.argv[3];
const server = kinesalite({ createStreamMs: 10, deleteStreamMs: 10, updateStreamMs: 10, path });
server.listen(port, '127.0.0.1', (err) => {
  if (err) { console.error(err); process.exit(1); }
  console.log(`kinesalite listening on 127.0.0.1:${port}${path ? ` (persistent: ${path})` : ''}`);
});
process.on('SIGTERM', () => server.close(() => process.exit(0)));
