DROP TABLE comments;
DROP TABLE post_likes;
DROP TABLE posts;
DROP TABLE api_tokens;
DROP TABLE users;
