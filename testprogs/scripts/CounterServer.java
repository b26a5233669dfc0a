// A JVM server for testprogs/tests/servers.rs: HTTP on the first port
// (GET /inc adds one to a counter and answers it, GET /stat answers
// "count=N"), and a stream port: each connection sends numbered lines
// 1, 2, 3, ... and "end", and is answered "got=G bad=B last=L" (B counts
// values that were not the one after the last).
import com.sun.net.httpserver.HttpExchange;
import com.sun.net.httpserver.HttpServer;
import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStreamReader;
import java.io.OutputStream;
import java.net.InetSocketAddress;
import java.net.ServerSocket;
import java.net.Socket;
import java.nio.charset.StandardCharsets;
import java.util.concurrent.Executors;
import java.util.concurrent.atomic.AtomicLong;

public class CounterServer {
    static final AtomicLong count = new AtomicLong();

    public static void main(String[] args) throws Exception {
        int httpPort = Integer.parseInt(args[0]);
        int streamPort = Integer.parseInt(args[1]);
        HttpServer http = HttpServer.create(new InetSocketAddress(httpPort), 64);
        http.createContext("/inc", ex -> reply(ex, count.incrementAndGet() + "\n"));
        http.createContext("/stat", ex -> reply(ex, "count=" + count.get() + "\n"));
        http.setExecutor(Executors.newFixedThreadPool(4));
        http.start();
        ServerSocket streams = new ServerSocket(streamPort, 16);
        System.out.println("LISTENING");
        System.out.flush();
        while (true) {
            Socket c = streams.accept();
            new Thread(() -> stream(c)).start();
        }
    }

    static void reply(HttpExchange ex, String body) throws IOException {
        byte[] b = body.getBytes(StandardCharsets.US_ASCII);
        ex.getResponseHeaders().set("Content-Type", "text/plain");
        ex.sendResponseHeaders(200, b.length);
        try (OutputStream o = ex.getResponseBody()) {
            o.write(b);
        }
    }

    static void stream(Socket c) {
        long last = 0, got = 0, bad = 0;
        try (c;
                BufferedReader r = new BufferedReader(
                        new InputStreamReader(c.getInputStream(), StandardCharsets.US_ASCII))) {
            String line;
            while ((line = r.readLine()) != null) {
                if (line.equals("end")) {
                    String v = "got=" + got + " bad=" + bad + " last=" + last + "\n";
                    c.getOutputStream().write(v.getBytes(StandardCharsets.US_ASCII));
                    return;
                }
                long n;
                try {
                    n = Long.parseLong(line);
                } catch (NumberFormatException e) {
                    n = -1;
                }
                if (n == last + 1) {
                    got++;
                } else {
                    bad++;
                    System.out.println("stream: got " + line + " after " + last);
                }
                last = n;
            }
            if (last > 0) System.out.println("stream: ended without end after " + last);
        } catch (IOException e) {
            System.out.println("stream error: " + e);
        }
    }
}
